"""Importing and exporting counts files (catalog/imports/, catalog/export.py) and the bulk
writer under them (catalog/bulk.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from catalog import bulk, registry
from catalog import db as catalog_db
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.errors import InvalidInput
from catalog.export import EXPORT_COLUMNS, export_counts
from catalog.imports import REQUIRED_COLUMNS, import_counts, import_unit_key
from catalog.imports import base as import_base
from catalog.schema import Base, Run, storable_text, utcnow
from catalog.views import read_view

ROWS = [
    # family, stage, model, task, prompt, option, count, n_invalid, prompt_text
    ("fam", "base", "fam-base", "digit", "p_a", "7", 6, 2, "Pick a digit."),
    ("fam", "base", "fam-base", "digit", "p_a", "3", 2, 2, None),
    ("fam", "base", "fam-base", "digit", "p_b", "1", 5, None, "Any digit?"),
    ("fam", "SFT", "fam-sft", "digit", "p_a", "7", 9, 0, None),
    ("fam", "SFT", "fam-sft", "digit", "p_b", "7", 4, 0, None),
    ("fam", "SFT", "fam-sft", "tree", "q1", "oak, red", 3, 1, 'Name a "tree".'),
    ("fam", "SFT", "fam-sft", "tree", "q1", "elm", 1, 1, None),
    ("fam", "dpo", "fam-dpo", "tree", "q1", "oak, red", 0, 0, None),
    ("fam", "dpo", "fam-dpo", "tree", "q1", "elm", 5, 0, None),
]
COLUMNS = ["family", "stage", "model", "task", "prompt", "option", "count", "n_invalid", "prompt_text"]


def counts_frame(rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=COLUMNS, orient="row")


def write_csv(tmp_path, frame: pl.DataFrame, name="counts.csv"):
    path = tmp_path / name
    frame.write_csv(path)
    return path


def table_sizes(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(table)).scalar()
            for name, table in Base.metadata.tables.items()
        }


def stored_counts(engine) -> pl.DataFrame:
    return (
        read_view(engine, "v_counts")
        .drop("run_id")
        .sort("model", "task", "prompt", "option")
    )


def test_import_stores_runs_counts_and_new_entities(engine, tmp_path):
    summary = import_counts(engine, write_csv(tmp_path, counts_frame()))
    assert (summary.rows, summary.runs, summary.replaced_runs, summary.samples) == (9, 6, 0, 35)
    assert (summary.new_models, summary.new_tasks, summary.new_prompts) == (3, 2, 3)
    runs = read_view(engine, "v_runs").sort("model", "task", "prompt")
    assert runs.select("model", "stage_order", "prompt", "n_valid", "n_invalid", "n_samples").rows() == [
        ("fam-base", 0, "p_a", 8, 2, 10),
        ("fam-base", 0, "p_b", 5, 0, 5),
        ("fam-dpo", 2, "q1", 5, 0, 5),
        ("fam-sft", 1, "p_a", 9, 0, 9),
        ("fam-sft", 1, "p_b", 4, 0, 4),
        ("fam-sft", 1, "q1", 4, 1, 5),
    ]
    assert set(runs["origin"]) == {"import"} and set(runs["mode"]) == {"sampled"}
    with session_scope(engine) as session:
        tree = registry.task_by_name(session, "tree")
        assert (tree.kind, tree.normalizer) == ("open", "open_word")
        assert tree.prompts[0].template == 'Name a "tree".'
        # A bundled task keeps its definition; an unknown prompt key is appended to it.
        digit = registry.task_by_name(session, "digit")
        assert digit.kind == "closed"
        assert [p.key for p in digit.prompts][-2:] == ["p_a", "p_b"]
        assert registry.get_model(session, "fam-base").prompt_format == "plain"
        assert registry.get_model(session, "fam-sft").source is None
        run = session.scalars(select(Run).where(Run.n_invalid == 2)).one()
        assert run.unit_key == import_unit_key("fam-base", "digit", "p_a")
        assert run.status == "done" and run.finished_at is not None


def test_distributions_of_an_import_sum_to_one(engine, tmp_path):
    import_counts(engine, write_csv(tmp_path, counts_frame()))
    dist = read_view(engine, "v_distributions")
    sums = dist.group_by("model", "prompt").agg(pl.col("probability").sum())
    assert sums.height == 6
    assert sums["probability"].to_list() == pytest.approx([1.0] * 6)
    oak = dist.filter(model="fam-sft", option="oak, red")
    assert oak["probability"].item() == pytest.approx(0.75)


def test_importing_twice_does_not_double_counts(engine, tmp_path):
    path = write_csv(tmp_path, counts_frame())
    import_counts(engine, path)
    before, sizes = stored_counts(engine), table_sizes(engine)
    summary = import_counts(engine, path)
    assert summary.replaced_runs == 6
    assert_frame_equal(stored_counts(engine), before)
    assert table_sizes(engine) == sizes


def test_reimport_replaces_a_runs_counts(engine, tmp_path):
    import_counts(engine, write_csv(tmp_path, counts_frame()))
    changed = counts_frame(ROWS[:1]).with_columns(count=pl.lit(60), n_invalid=pl.lit(0))
    import_counts(engine, write_csv(tmp_path, changed, "fix.csv"))
    run = read_view(engine, "v_counts", model="fam-base").filter(prompt="p_a")
    assert run.select("option", "count", "n_invalid").rows() == [("7", 60, 0)]
    assert read_view(engine, "v_counts").height == len(ROWS) - 1


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_export_then_import_round_trips(engine, tmp_path, suffix):
    import_counts(engine, write_csv(tmp_path, counts_frame()))
    before = stored_counts(engine)
    exported = tmp_path / f"export.{suffix}"
    assert export_counts(engine, exported) == len(ROWS)
    frame = pl.read_csv(exported) if suffix == "csv" else pl.read_parquet(exported)
    assert frame.columns == list(EXPORT_COLUMNS)
    assert import_counts(engine, exported).replaced_runs == 6
    assert_frame_equal(stored_counts(engine), before)


def test_export_filters_and_pools_runs(engine, tmp_path):
    import_counts(engine, write_csv(tmp_path, counts_frame()))
    path = tmp_path / "tree.csv"
    assert export_counts(engine, path, task="tree", family=["fam"]) == 4
    assert set(pl.read_csv(path)["task"]) == {"tree"}
    with pytest.raises(InvalidInput, match="--format csv or parquet"):
        export_counts(engine, tmp_path / "out.xlsx")
    assert export_counts(engine, tmp_path / "out.data", format="parquet") == len(ROWS)


def test_export_of_exact_probabilities(engine, tmp_path):
    import_counts(engine, write_csv(tmp_path, counts_frame()))
    with engine.begin() as conn:
        run_id = conn.execute(text("SELECT MIN(id) FROM runs")).scalar()
        conn.execute(text("UPDATE runs SET mode = 'exact' WHERE id = :id"), {"id": run_id})
        conn.execute(
            text("INSERT INTO exact_probs VALUES (:id, 'x', 0.25), (:id, 'y', 0.25)"), {"id": run_id}
        )
    path = tmp_path / "exact.csv"
    assert export_counts(engine, path, mode="exact") == 2
    assert pl.read_csv(path)["probability"].to_list() == [0.5, 0.5]


def test_parquet_with_typed_columns_and_stage_orders(engine, tmp_path):
    frame = pl.DataFrame(
        {
            "family": ["f", "f"],
            "stage": ["ppo", "base"],
            "stage_order": [5, None],
            "model": ["f-ppo", "f-base"],
            "task": ["digit", "digit"],
            "prompt": ["p", "p"],
            "option": [7, 3],  # integers in the file, options are text
            "count": [2.0, 3.0],  # whole floats are accepted
        }
    )
    path = tmp_path / "counts.parquet"
    frame.write_parquet(path)
    import_counts(engine, path)
    runs = read_view(engine, "v_runs").sort("stage_order")
    assert runs.select("model", "stage_order", "n_valid").rows() == [("f-base", 0, 3), ("f-ppo", 5, 2)]
    bad = frame.with_columns(count=pl.Series([2.0, 2.5]))
    bad.write_parquet(path)
    with pytest.raises(InvalidInput, match=r"counts.parquet: row 2, column count: 2.5 is not a whole"):
        import_counts(engine, path)


def _bad(rows=ROWS, **changes):
    """The standard rows with row 2 (1-based) changed."""
    frame = counts_frame(rows).with_row_index()
    for column, value in changes.items():
        frame = frame.with_columns(
            pl.when(pl.col("index") == 1).then(pl.lit(value)).otherwise(pl.col(column).cast(pl.String)).alias(column)
        )
    return frame.drop("index")


BAD_FILES = {
    "missing column": (
        lambda: counts_frame().drop("count"),
        "missing column(s) count; required: family, stage, model, task, prompt, option, count",
    ),
    "empty value": (lambda: _bad(model=""), "row 2 (line 3), column model: empty"),
    "negative count": (lambda: _bad(count="-1"), "row 2 (line 3), column count: -1 is negative"),
    "fractional count": (lambda: _bad(count="1.5"), "row 2 (line 3), column count: '1.5' is not a whole number"),
    "text count": (lambda: _bad(count="many"), "column count: 'many' is not a whole number"),
    "negative n_invalid": (lambda: _bad(n_invalid="-3"), "row 2 (line 3), column n_invalid: -3 is negative"),
    "unknown stage": (
        lambda: _bad(stage="ppo"),
        "row 2 (line 3), column stage: unknown stage name 'ppo' with no stage_order",
    ),
    "model in two stages": (
        lambda: _bad(stage="sft"),
        "row 2 (line 3), column stage: 'sft' differs from an earlier row (one model is one stage)",
    ),
    "inconsistent n_invalid": (
        lambda: _bad(n_invalid="5"),
        "row 2 (line 3), column n_invalid: 5 differs from an earlier row",
    ),
    "two texts for a prompt": (
        lambda: _bad(prompt_text="Other words."),
        "row 2 (line 3), column prompt_text: 'Other words.' differs",
    ),
    "duplicate option": (
        lambda: _bad(option="7"),
        "row 2 (line 3), column option: '7' repeats an earlier row",
    ),
    "option not in a closed task": (
        lambda: _bad(option="eleven"),
        "row 2 (line 3), column option: 'eleven' is not an option of the closed task 'digit'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_row_fails_the_whole_import(engine, tmp_path, case):
    make, message = BAD_FILES[case]
    import_counts(engine, write_csv(tmp_path, counts_frame(ROWS[3:]), "earlier.csv"))
    before, sizes = stored_counts(engine), table_sizes(engine)
    path = write_csv(tmp_path, make())
    with pytest.raises(InvalidInput) as info:
        import_counts(engine, path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert table_sizes(engine) == sizes
    assert_frame_equal(stored_counts(engine), before)


def test_conflicts_with_the_catalog_store_nothing(engine, tmp_path):
    with session_scope(engine) as session:
        registry.add_model(session, name="fam-sft", family="other", stage="sft")
    sizes = table_sizes(engine)
    with pytest.raises(InvalidInput, match="row 4 \\(line 5\\), column model: 'fam-sft' is registered as family 'other'"):
        import_counts(engine, write_csv(tmp_path, counts_frame()))
    assert table_sizes(engine) == sizes
    # A prompt stored with another text: found after families and models were created.
    with session_scope(engine) as session:
        registry.ensure_prompt(session, registry.ensure_open_task(session, "tree"), "q1", "Trees!")
    sizes = table_sizes(engine)
    rows = [r for r in ROWS if r[2] != "fam-sft"] + [(*ROWS[5][:2], "fam-x", *ROWS[5][3:])]
    with pytest.raises(InvalidInput, match="prompt 'q1' of task 'tree' is stored with a different text"):
        import_counts(engine, write_csv(tmp_path, counts_frame(rows)))
    assert table_sizes(engine) == sizes


def test_unreadable_files_are_refused(engine, tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        import_counts(engine, tmp_path / "nope.csv")
    with pytest.raises(InvalidInput, match="counts files are .csv or .parquet"):
        import_counts(engine, tmp_path / "counts.json")
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    with pytest.raises(InvalidInput, match="no rows to import"):
        import_counts(engine, empty)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(InvalidInput, match="broken.parquet: cannot read it as parquet"):
        import_counts(engine, broken)


def test_big_imports_keep_the_foreign_key(engine, tmp_path, monkeypatch):
    """The PostgreSQL bulk path drops option_counts' foreign key during the load."""
    monkeypatch.setattr(import_base, "_DROP_FOREIGN_KEY_ROWS", 1)
    path = write_csv(tmp_path, counts_frame())
    import_counts(engine, path)
    import_counts(engine, path)
    assert read_view(engine, "v_counts")["count"].sum() == 35
    keys = inspect(engine).get_foreign_keys("option_counts")
    assert [(k["name"], k["referred_table"], k["options"].get("ondelete")) for k in keys] == [
        ("fk_option_counts_run_id_runs", "runs", "CASCADE")
    ]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO option_counts VALUES (999999, 'x', 1)"))


def test_same_import_gives_the_same_frames_on_both_databases(postgres, tmp_path):
    path = write_csv(tmp_path, counts_frame())
    frames = []
    for url in (f"sqlite:///{tmp_path / 'c.db'}", postgres.create()):
        engine = catalog_db.open_catalog(url)
        import_counts(engine, path)
        frames.append(read_view(engine, "v_distributions").sort("model", "task", "prompt", "option"))
        engine.dispose()
    assert_frame_equal(frames[0], frames[1])


def test_counts_of_a_registered_model_attach_to_it(engine, tmp_path):
    with session_scope(engine) as session:
        registry.add_model(
            session, name="fam-sft", family="fam", stage="sft", source="org/fam-sft"
        )
    summary = import_counts(engine, write_csv(tmp_path, counts_frame()))
    assert summary.new_models == 2  # fam-base and fam-dpo; fam-sft was registered
    with session_scope(engine) as session:
        model = registry.get_model(session, "fam-sft")
        assert (model.source, model.stage) == ("org/fam-sft", "sft")
    assert read_view(engine, "v_runs", model="fam-sft").height == 3


def test_bulk_written_runs_read_back_as_the_orm_writes_them(engine, tmp_path):
    """The bulk writer sends what the schema's column types send: an imported run reads
    back with aware UTC timestamps, its JSON as dicts and stale as False; on SQLite its
    timestamp text has the shape of one the ORM wrote (the family's)."""
    before = utcnow()
    import_counts(engine, write_csv(tmp_path, counts_frame()))
    with session_scope(engine) as session:
        run = session.scalars(select(Run).order_by(Run.id)).first()
        assert before <= run.created_at == run.finished_at <= utcnow()
        assert (run.sampling, run.library_versions, run.stale) == ({}, {}, False)
        assert run.condition == Condition.unknown_import().to_dict()
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            bulk_stamp, orm_stamp = conn.execute(text(
                "SELECT r.created_at, f.created_at FROM runs r, families f")).first()
        assert re.sub(r"\d", "0", bulk_stamp) == re.sub(r"\d", "0", orm_stamp)


def test_the_bulk_texts_follow_the_schemas_storable_text():
    texts = ["4\x00", "\x00a\x00", "plain", "", "\ufffd"]
    stored = pl.select(bulk.storable_texts(pl.lit(pl.Series(texts)))).to_series().to_list()
    assert stored == [storable_text(t) for t in texts]
    assert stored[:2] == ["4\ufffd", "\ufffda\ufffd"]
