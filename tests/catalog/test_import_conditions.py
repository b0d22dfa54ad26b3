"""import-counts with conditions and checkpoints, read in chunks (catalog/imports/), on SQLite
and PostgreSQL: a file read a few rows at a time stores exactly what it stores read whole,
and a bad row in a later chunk still names its row and stores nothing."""

from __future__ import annotations

import math

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sqlalchemy import func, inspect, select

from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.errors import InvalidInput
from catalog.export import export_counts
from catalog.imports import base as import_base
from catalog.imports import counts as counts_import
from catalog.imports import import_completions, import_counts
from catalog.records import FieldMap
from catalog.schema import Base, Model
from catalog.views import read_view

BASE = {"family": "fam", "stage": "base", "model": "fam-base", "task": "coin", "prompt": "plain"}
# Two conditions of one (model, task, prompt), and an unknown one.
ROWS = [
    {**BASE, "option": "heads", "count": 30, "temperature": 0.7, "top_p": 0.9},
    {**BASE, "option": "tails", "count": 10, "temperature": 0.7, "top_p": 0.9},
    {**BASE, "option": "heads", "count": 5, "temperature": 1.5, "max_new_tokens": 8},
    {**BASE, "option": "tails", "count": 15, "temperature": 1.5, "max_new_tokens": 8},
    {**BASE, "option": "heads", "count": 2},
]
SCHEMA = {"family": pl.String, "stage": pl.String, "model": pl.String, "task": pl.String,
          "prompt": pl.String, "option": pl.String, "count": pl.Int64,
          "temperature": pl.Float64, "top_p": pl.Float64, "max_new_tokens": pl.Int64}


def write(tmp_path, rows, name="counts.csv", schema=SCHEMA):
    path = tmp_path / name
    frame = pl.DataFrame(rows, schema=schema)
    frame.write_csv(path) if path.suffix == ".csv" else frame.write_parquet(path)
    return path


def small_chunks(monkeypatch, rows: int) -> None:
    """CSV in blocks of about ``rows`` rows of many_rows(); Parquet in chunks of ``rows``."""
    monkeypatch.setattr(counts_import, "_BLOCK_BYTES", 60 * rows)
    monkeypatch.setattr(import_base, "CHUNK_ROWS", rows)


def table_sizes(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(t)).scalar()
                for name, t in Base.metadata.tables.items()}


def entropy(counts) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


def test_each_condition_is_its_own_run_and_distribution(engine, tmp_path):
    summary = import_counts(engine, write(tmp_path, ROWS))
    assert (summary.rows, summary.runs) == (5, 3)
    runs = read_view(engine, "v_runs").sort("temperature", nulls_last=True)
    assert runs.select("temperature", "top_p", "max_new_tokens", "n_valid").rows() == [
        (0.7, 0.9, None, 40), (1.5, None, 8, 20), (None, None, None, 2)]
    assert runs["condition_key"][2] == Condition.unknown_import().key
    assert runs["condition_key"][1] == Condition.sampled(
        temperature=1.5, top_p=None, top_k=None, max_new_tokens=8).key
    # Never pooled: each condition's entropy is that of its own rows alone.
    dist = read_view(engine, "v_distributions")
    for key, rows in dist.group_by("condition_key"):
        own = [r["count"] for r in ROWS
               if Condition.sampled(temperature=r.get("temperature"), top_p=r.get("top_p"),
                                    top_k=None, max_new_tokens=r.get("max_new_tokens")).key == key[0]
               or (key[0] == Condition.unknown_import().key and "temperature" not in r)]
        probabilities = rows["probability"].to_list()
        assert -sum(p * math.log2(p) for p in probabilities if p) == pytest.approx(entropy(own))


def test_export_keeps_conditions_and_steps_for_a_round_trip(engine, tmp_path):
    rows = [{**r, "step": 1000} for r in ROWS[:2]] + [
        {**ROWS[0], "model": "fam-base-final"}]
    schema = {**SCHEMA, "step": pl.Int64}
    import_counts(engine, write(tmp_path, rows, schema=schema))
    before = read_view(engine, "v_counts").drop("run_id").sort("model", "condition_key", "option")
    exported = tmp_path / "out.parquet"
    assert export_counts(engine, exported) == 3
    frame = pl.read_parquet(exported)
    assert frame.filter(model="fam-base").select("step", "temperature", "top_p").unique().rows() == [
        (1000, 0.7, 0.9)]
    assert import_counts(engine, exported).replaced_runs == 2
    assert_frame_equal(
        read_view(engine, "v_counts").drop("run_id").sort("model", "condition_key", "option"),
        before)
    with session_scope(engine) as session:
        steps = dict(session.execute(select(Model.name, Model.step)).all())
    assert steps == {"fam-base": 1000, "fam-base-final": None}


def test_checkpoints_of_a_stage_are_separate_models(engine, tmp_path):
    rows = [{**ROWS[4], "model": f"fam-base-{step}", "step": step} for step in (0, 500, 1000)]
    import_counts(engine, write(tmp_path, rows, schema={**SCHEMA, "step": pl.Int64}))
    runs = read_view(engine, "v_runs").sort("step")
    assert runs.select("model", "stage", "step").rows() == [
        ("fam-base-0", "base", 0), ("fam-base-500", "base", 500), ("fam-base-1000", "base", 1000)]
    twice = [*rows, {**rows[0], "model": "another-0"}]
    with pytest.raises(InvalidInput, match=r"row 4 \(line 5\), column model: 'another-0' differs "
                       r"from an earlier row \(one stage of a family, or one step of it"):
        import_counts(engine, write(tmp_path, twice, schema={**SCHEMA, "step": pl.Int64}))


def many_rows(n_prompts=7) -> list[dict]:
    rows = []
    for prompt in range(n_prompts):
        for stage in ("base", "sft"):
            for option in ("heads", "tails"):
                rows.append({"family": "fam", "stage": stage, "model": f"fam-{stage}",
                             "task": "coin", "prompt": f"p{prompt}", "option": option,
                             "count": 3 * prompt + (option == "heads"), "n_invalid": prompt,
                             "prompt_text": f"Flip coin number {prompt}."})
    return rows


MANY = {"family": pl.String, "stage": pl.String, "model": pl.String, "task": pl.String,
        "prompt": pl.String, "option": pl.String, "count": pl.Int64, "n_invalid": pl.Int64,
        "prompt_text": pl.String}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_reading_in_small_chunks_stores_the_same(engine, tmp_path, monkeypatch, order, suffix):
    rows = many_rows()
    frame = pl.DataFrame(rows, schema=MANY)
    if order == "shuffled":  # every run's rows spread over several chunks
        frame = frame.sample(fraction=1.0, shuffle=True, seed=3)
    # The text and n_invalid of a prompt given on one of its rows only.
    frame = frame.with_columns(
        pl.when(pl.struct("prompt").is_first_distinct()).then(pl.col("prompt_text")),
        pl.when(pl.struct("model", "prompt").is_first_distinct()).then(pl.col("n_invalid")),
    )
    path = tmp_path / f"counts.{suffix}"
    frame.write_csv(path) if suffix == "csv" else frame.write_parquet(path)
    whole = import_counts(engine, path)
    stored = read_view(engine, "v_runs").drop("run_id", "finished_at").sort("model", "prompt")
    small_chunks(monkeypatch, 3)
    again = import_counts(engine, path)
    assert (again.rows, again.runs, again.samples) == (whole.rows, whole.runs, whole.samples)
    assert again.replaced_runs == whole.runs
    assert_frame_equal(read_view(engine, "v_runs").drop("run_id", "finished_at")
                       .sort("model", "prompt"), stored)
    assert stored["n_invalid"].to_list() == [p for p in range(7)] * 2


LATER_ROW_ERRORS = {
    # Chunks of about 4 rows. Row 12 of many_rows() is (sft, p2, tails), row 11 (sft, p2,
    # heads); row 13 is (base, p3, heads), and (base, p2, heads) is row 9, chunks before.
    "repeated option": (12, {"option": "heads"}, "column option: 'heads' repeats"),
    "option repeated from an earlier chunk": (
        13, {"prompt": "p2", "prompt_text": "Flip coin number 2.", "n_invalid": 2},
        "column option: 'heads' repeats an earlier row"),
    "n_invalid": (12, {"n_invalid": 99}, "column n_invalid: 99 differs from an earlier row"),
    "prompt text": (12, {"prompt_text": "Other."}, "column prompt_text: 'Other.' differs"),
    "family": (12, {"family": "other"}, "column family: 'other' differs"),
}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("case", list(LATER_ROW_ERRORS))
def test_a_bad_row_in_a_later_chunk_stores_nothing(engine, tmp_path, monkeypatch, case, suffix):
    row, change, message = LATER_ROW_ERRORS[case]
    rows = many_rows()
    rows[row - 1] = {**rows[row - 1], **change}
    small_chunks(monkeypatch, 4)
    sizes = table_sizes(engine)
    with pytest.raises(InvalidInput) as info:
        import_counts(engine, write(tmp_path, rows, f"counts.{suffix}", schema=MANY))
    where = f"row {row} (line {row + 1})" if suffix == "csv" else f"row {row}"
    assert f"counts.{suffix}: {where}, {message}" in str(info.value)
    assert table_sizes(engine) == sizes


def test_columns_can_be_renamed_and_set(engine, tmp_path):
    frame = pl.DataFrame({"Outcome": ["heads", "tails"], "N": [3, 4]})
    frame.write_csv(tmp_path / "flips.csv")
    fields = FieldMap.parse(["outcome=option", "n=count"],
                            ["family=fam", "stage=base", "model=fam-base", "task=coin",
                             "prompt=plain", "temperature=0.5"])
    import_counts(engine, tmp_path / "flips.csv", fields=fields)
    runs = read_view(engine, "v_runs")
    assert runs.select("model", "prompt", "temperature", "n_valid").rows() == [
        ("fam-base", "plain", 0.5, 7)]
    with pytest.raises(InvalidInput, match="--map 'outcome': expected FIELD=COLUMN"):
        FieldMap.parse(["outcome"])


def test_condition_values_are_checked(engine, tmp_path):
    bad = [ROWS[0], {**ROWS[1], "top_p": 0.0}]
    with pytest.raises(InvalidInput, match=r"row 2 \(line 3\), column top_p: 0.0 must be in \(0, 1\]"):
        import_counts(engine, write(tmp_path, bad))
    schema = {**SCHEMA, "top_k": pl.String}
    bad = [{**ROWS[0], "top_k": "5"}, {**ROWS[1], "top_k": "-1"}]
    with pytest.raises(InvalidInput, match=r"row 2 \(line 3\), column top_k: -1 is negative"):
        import_counts(engine, write(tmp_path, bad, schema=schema))
    # top_k 0 means off, as in ingest: the same condition as no top_k.
    import_counts(engine, write(tmp_path, [{**r, "top_k": "0"} for r in ROWS[:2]], schema=schema))
    assert read_view(engine, "v_runs")["top_k"].to_list() == [None]


def test_a_big_import_puts_every_foreign_key_back(engine, tmp_path, monkeypatch):
    """PostgreSQL drops the runs' and the count tables' foreign keys while it loads."""
    monkeypatch.setattr(import_base, "_DROP_FOREIGN_KEY_ROWS", 1)
    before = {t: inspector_keys(engine, t) for t in ("runs", "option_counts", "completions")}
    import_counts(engine, write(tmp_path, ROWS))
    (tmp_path / "g.jsonl").write_text('{"family": "fam", "stage": "base", "model": "fam-base", '
                                      '"task": "coin", "prompt": "plain", "completion": "heads"}\n')
    import_completions(engine, tmp_path / "g.jsonl")
    after = {t: inspector_keys(engine, t) for t in before}
    assert after == before and len(after["runs"]) == 3


def inspector_keys(engine, table) -> list:
    return sorted((k["name"], k["referred_table"]) for k in inspect(engine).get_foreign_keys(table))
