"""analysis.frames: reading counts from the store's views (SQLite and PostgreSQL)."""

import hashlib

import polars as pl
import pytest
from sqlalchemy import select

from analysis.crystallization import analyze
from analysis.frames import read_counts
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.errors import NotFound
from catalog.imports import import_counts
from catalog.schema import ExactProb, Model, OptionCount, Prompt, Run, Task

COUNTS = pl.DataFrame(
    {
        "family": ["fam"] * 8,
        "stage": ["base"] * 4 + ["sft"] * 4,
        "stage_order": [0] * 4 + [1] * 4,
        "model": ["fam-base"] * 4 + ["fam-sft"] * 4,
        "task": ["pick"] * 8,
        "prompt": ["first", "first", "second", "second"] * 2,
        "option": ["x", "y"] * 4,
        "count": [6, 4, 1, 9, 10, 0, 9, 1],
        "n_invalid": [2, 2, 0, 0, 0, 0, 0, 0],
    }
)


def _import(engine, tmp_path, frame=COUNTS):
    path = tmp_path / "counts.parquet"
    frame.write_parquet(path)
    import_counts(engine, path)


def _add_run(session, model, prompt, mode="sampled", status="done", n_invalid=0, counts=None,
             probs=None, condition=None):
    """A run written through the ORM, as ingest would (one more unit of work); by default in
    the imported counts' condition, so that it pools with them."""
    condition = condition or Condition(mode, imported=True)
    model = session.scalar(select(Model).where(Model.name == model))
    prompt = session.scalar(select(Prompt).join(Task).where(Prompt.key == prompt, Task.name == "pick"))
    key = hashlib.sha256(f"{model.id}/{prompt.id}/{mode}/{status}/{n_invalid}".encode()).hexdigest()
    run = Run(unit_key=key, model_id=model.id, task_id=prompt.task_id, prompt_id=prompt.id,
              mode=mode, status=status, n_invalid=n_invalid, covered_mass=0.75 if probs else None,
              condition=condition.to_dict(), condition_key=condition.key)
    session.add(run)
    session.flush()
    for option, count in (counts or {}).items():
        session.add(OptionCount(run_id=run.id, option=option, count=count))
    for option, probability in (probs or {}).items():
        session.add(ExactProb(run_id=run.id, option=option, probability=probability))


def test_counts_of_several_done_runs_are_pooled(engine, tmp_path):
    _import(engine, tmp_path)
    with session_scope(engine) as session:
        _add_run(session, "fam-sft", "first", counts={"x": 5, "y": 5}, n_invalid=3)
        _add_run(session, "fam-sft", "first", status="pending", counts={"x": 100})  # not done
    data = read_counts(engine)
    assert data.mode == "sampled"
    assert data.units.height == 4
    pooled = (
        data.counts.join(data.units, on="unit")
        .filter((pl.col("stage") == "sft") & (pl.col("prompt") == "first"))
        .group_by("option").agg(pl.col("value").sum()).sort("option")
    )
    assert pooled.rows() == [("x", 15), ("y", 5)]
    sft_first = data.units.filter((pl.col("stage") == "sft") & (pl.col("prompt") == "first"))
    assert sft_first["n_invalid"].to_list() == [3]
    assert data.tasks.rows() == [("pick", "open", [])]


def test_validity_counts_runs_whose_samples_are_all_invalid(engine, tmp_path):
    _import(engine, tmp_path)
    with session_scope(engine) as session:
        prompt = Prompt(task_id=session.scalar(select(Task.id).where(Task.name == "pick")),
                        key="third", position=2)
        session.add(prompt)
        session.flush()
        _add_run(session, "fam-base", "third", n_invalid=20)  # no valid sample at all
    task = analyze(engine).to_dict()["tasks"][0]
    assert task["excluded_prompts"] == {"base": ["third"]}
    assert task["validity"]["base"] == pytest.approx(20 / (20 + 2 + 20))  # 2 invalid imported
    assert task["validity"]["sft"] == 1.0
    assert task["n_prompts"] == {"base": 2, "sft": 2}


def test_exact_probabilities_are_read_apart_from_sampled_counts(engine, tmp_path):
    _import(engine, tmp_path)
    with session_scope(engine) as session:
        for model in ("fam-base", "fam-sft"):
            for prompt in ("first", "second"):
                _add_run(session, model, prompt, mode="exact", probs={"x": 0.6, "y": 0.2})
    exact = read_counts(engine, mode="exact")
    assert exact.counts["value"].dtype == pl.Float64
    assert sorted(set(exact.counts["value"].round(6).to_list())) == [0.25, 0.75]  # renormalized
    sampled = read_counts(engine)
    assert sampled.counts["value"].dtype == pl.Int64
    assert sampled.counts["value"].sum() == COUNTS["count"].sum()  # no exact row mixed in
    task = analyze(engine, mode="exact").to_dict()["tasks"][0]
    assert task["validity"] == {"base": 0.75, "sft": 0.75}  # exact: mean covered mass


def test_selection_by_family_and_task(engine, tmp_path):
    _import(engine, tmp_path)
    other = COUNTS.with_columns(family=pl.lit("other"), model=pl.concat_str(pl.lit("o-"), "stage"))
    _import(engine, tmp_path, other.with_columns(task=pl.lit("pick2")))
    data = read_counts(engine, families=["other"])
    assert data.units["family"].unique().to_list() == ["other"]
    assert data.units["task"].unique().to_list() == ["pick2"]
    assert read_counts(engine, tasks=["pick"]).units["family"].unique().to_list() == ["fam"]


def test_an_empty_selection_is_a_clear_error(engine, tmp_path):
    with pytest.raises(NotFound, match="no done sampled runs to analyze"):
        read_counts(engine)
    _import(engine, tmp_path)
    with pytest.raises(NotFound, match="family nobody; family names with sampled runs: fam"):
        read_counts(engine, families=["nobody"])
    with pytest.raises(NotFound, match="no done exact runs"):
        read_counts(engine, mode="exact")
