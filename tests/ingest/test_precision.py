"""Runs of different numeric precision never pool: a run sampled below float32 stores its
dtype in its condition (and so in its condition key); float32 runs keep their keys."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from catalog.conditions import Condition
from ingest.backends import BACKENDS, TableBackend, register_backend
from ingest.worker import precision_columns, run_worker
from table_workers import plan_grid, table_models


class Bfloat16Table(TableBackend):
    """The table backend reporting that it ran in bfloat16, as a GPU model would."""

    def provenance(self):
        return {**super().provenance(), "dtype": "bfloat16"}


@pytest.fixture
def bf16_table():
    register_backend("bf16-table", Bfloat16Table)
    yield
    BACKENDS.pop("bf16-table")


def stored_conditions(engine) -> list[tuple[dict, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT condition, condition_key, dtype FROM runs ORDER BY id")).all()
    return [(json.loads(c) if isinstance(c, str) else c, k, d) for c, k, d in rows]


def test_a_bfloat16_run_stores_its_dtype_in_its_condition(engine, tmp_path, bf16_table):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    planned, planned_key, _ = stored_conditions(engine)[0]
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET backend = 'bf16-table'"))
    assert run_worker(engine).done == 1
    condition, key, dtype = stored_conditions(engine)[0]
    assert dtype == "bfloat16" and condition == {**planned, "dtype": "bfloat16"}
    assert key == Condition.from_dict(condition).key != planned_key
    assert "bfloat16" in Condition.from_dict(condition).label()


def test_float32_and_unknown_precision_keep_the_planned_condition():
    planned = Condition.sampled(temperature=1.0, top_p=1.0, top_k=None,
                                max_new_tokens=8).to_dict()
    assert precision_columns(planned, "float32") == {}
    assert precision_columns(planned, None) == {}
    assert precision_columns(None, "float16") == {}
    half = precision_columns(planned, "float16")
    assert half["condition"]["dtype"] == "float16"
    assert half["condition_key"] != Condition.from_dict(planned).key
    # the key of a float32 condition is what it always was (no dtype in its JSON)
    assert "dtype" not in Condition.from_dict(planned).to_dict()
