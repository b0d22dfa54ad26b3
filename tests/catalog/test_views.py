"""Views as Polars frames (catalog/views.py): dtypes, filters, probabilities, both databases."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from catalog import db as catalog_db
from catalog import views
from catalog.errors import InvalidInput
from catalog.schema import ExactProb, Family, Model, OptionCount, Prompt, Run, Task
from catalog.views import VIEW_SCHEMAS, VIEWS, connectorx_uri, read_sql, read_view

# (family, stage, stage_order, task, prompt, {option: count}) of sampled runs.
SAMPLED = [
    ("fam", "base", 0, "digit", "p0", {"1": 3, "2": 1}),
    ("fam", "base", 0, "digit", "p1", {"3": 5}),
    ("fam", "sft", 1, "digit", "p0", {"7": 9, "1": 1}),
    ("fam", "sft", 1, "coin", "p0", {"heads": 2, "tails": 2}),
    ("other", "base", 0, "digit", "p0", {"4": 1}),
]


FINISHED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


@pytest.fixture(params=["small", "connectorx"])
def read_path(request, monkeypatch) -> str:
    """Read SQLite in this process (small results) or through connectorx (big ones)."""
    if request.param == "connectorx":
        monkeypatch.setattr(views, "_SMALL_RESULT_ROWS", 0)
    return request.param


def _store(engine) -> None:
    """Runs written through the ORM, as ingest writes them (one exact run too)."""
    with catalog_db.session_scope(engine) as session:
        families, models, tasks, prompts = {}, {}, {}, {}
        for n, (fam, stage, order, task, key, counts) in enumerate(SAMPLED):
            family = families.setdefault(fam, Family(name=fam))
            model = models.get((fam, stage))
            if model is None:
                model = models[(fam, stage)] = Model(
                    name=f"{fam}-{stage}", family=family, stage=stage, stage_order=order
                )
            task_row = tasks.setdefault(
                task, Task(name=task, kind="open", normalizer="open_word", normalizer_version="1")
            )
            if (task, key) not in prompts:
                position = sum(1 for t, _ in prompts if t == task)
                prompts[(task, key)] = Prompt(
                    task=task_row, key=key, position=position, template=f"Say {key}"
                )
            run = Run(
                unit_key=f"u{n}", model=model, task=task_row, prompt=prompts[(task, key)],
                mode="sampled", status="done", n_invalid=1, finished_at=FINISHED,
            )
            session.add(run)
            session.flush()
            session.add_all(OptionCount(run_id=run.id, option=o, count=c) for o, c in counts.items())
        exact = Run(
            unit_key="exact", model=models[("fam", "sft")], task=tasks["coin"],
            prompt=prompts[("coin", "p0")], mode="exact", status="done",
        )
        pending = Run(
            unit_key="pending", model=models[("fam", "base")], task=tasks["coin"],
            prompt=prompts[("coin", "p0")], mode="sampled", status="pending",
        )
        session.add_all([exact, pending])
        session.flush()
        session.add_all(
            [
                ExactProb(run_id=exact.id, option="heads", probability=0.6),
                ExactProb(run_id=exact.id, option="tails", probability=0.2),
                OptionCount(run_id=pending.id, option="heads", count=100),
            ]
        )


def test_views_have_fixed_dtypes_even_when_empty(engine, read_path):
    for name in VIEWS:
        assert read_view(engine, name).schema == pl.Schema(VIEW_SCHEMAS[name])
    _store(engine)
    for name in VIEWS:
        frame = read_view(engine, name)
        assert frame.height > 0
        assert frame.schema == pl.Schema(VIEW_SCHEMAS[name])
    assert read_view(engine, "v_runs", task="digit")["finished_at"].to_list() == [FINISHED] * 4


def test_distributions_sum_to_one_per_model_prompt_and_mode(engine):
    _store(engine)
    dist = read_view(engine, "v_distributions")
    sums = dist.group_by("model", "task", "prompt", "mode").agg(pl.col("probability").sum())
    assert sums.height == 6
    assert sums["probability"].to_list() == pytest.approx([1.0] * 6)
    exact = dist.filter(mode="exact").sort("option")
    assert exact["probability"].to_list() == pytest.approx([0.75, 0.25])
    assert exact["count"].to_list() == [None, None]


def test_pending_runs_are_invisible(engine):
    _store(engine)
    counts = read_view(engine, "v_counts", task="coin", mode="sampled")
    assert counts["count"].sum() == 4  # not the 100 of the pending run


def test_filters_take_one_name_or_a_list(engine):
    _store(engine)
    assert set(read_view(engine, "v_counts", family="other")["model"]) == {"other-base"}
    both = read_view(engine, "v_counts", family=["fam", "other"], task=["digit"])
    assert set(both["family"]) == {"fam", "other"} and set(both["task"]) == {"digit"}
    assert read_view(engine, "v_counts", family="o'brien; DROP TABLE runs").height == 0
    assert read_view(engine, "v_runs", model="fam-sft").height == 3


def test_unknown_view_is_refused(engine):
    with pytest.raises(InvalidInput, match="v_counts"):
        read_view(engine, "runs")


def test_read_sql_binds_parameters_and_reports_bad_queries(engine):
    _store(engine)
    sql = "SELECT option, count FROM v_counts WHERE model = :model AND task = :task ORDER BY option"
    frame = read_sql(engine, sql, {"model": "fam-base", "task": "digit"})
    assert frame.to_dicts() == [
        {"option": "1", "count": 3},
        {"option": "2", "count": 1},
        {"option": "3", "count": 5},
    ]
    assert frame.schema == pl.Schema({"option": pl.String, "count": pl.Int64})
    with pytest.raises(InvalidInput, match="the query failed"):
        read_sql(engine, "SELECT no_such_column FROM v_counts")


def test_read_sql_uses_connectorx_for_file_databases(engine):
    uri = connectorx_uri(engine)
    assert uri is not None and "+psycopg" not in uri
    assert uri.startswith("sqlite:///") or uri.startswith("postgresql://")


def test_same_frames_on_sqlite_and_postgresql(postgres, tmp_path, read_path):
    frames = {}
    for backend, url in (("sqlite", f"sqlite:///{tmp_path / 'c.db'}"), ("pg", postgres.create())):
        engine = catalog_db.open_catalog(url)
        _store(engine)
        frames[backend] = {
            name: read_view(engine, name).drop("run_id", strict=False).sort(pl.all())
            for name in ("v_counts", "v_distributions")
        }
        frames[backend]["v_runs"] = read_view(engine, "v_runs").drop("run_id").sort(pl.all())
        engine.dispose()
    for name in VIEWS:
        assert_frame_equal(frames["sqlite"][name], frames["pg"][name])


def test_reads_see_later_writes_of_the_same_process(engine, read_path):
    """Regression: in-process connectorx on SQLite hid this process's later commits."""
    with engine.connect() as held:  # a connection this process keeps open meanwhile
        assert read_view(engine, "v_counts").height == 0
        _store(engine)
        assert read_view(engine, "v_counts").height == 10
        assert held.exec_driver_sql("SELECT COUNT(*) FROM option_counts").scalar() == 9
