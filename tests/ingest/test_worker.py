"""The worker loop (ingest/worker.py), in this process: models loaded once while their units
remain, attempts and the failed state, max units, idle waiting, a prompt that renders
differently from its plan. Real worker processes are in test_worker_processes.py."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text

from catalog.errors import InvalidInput, NotFound
from catalog.tasks import bundled_task
from ingest.backends import BACKENDS, LoadOptions, TableBackend, register_backend
from ingest.events import ModelLoading, UnitClaimed, UnitDone, UnitFailed
from ingest.jobs import run_ingest
from ingest.worker import Worker, WorkerOptions, run_worker
from table_workers import (
    DIGIT_PROMPTS, counts, grid, plan_grid, scalar, statuses, table_models,
)


def test_a_worker_loads_each_model_once_while_its_units_remain(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a", "m-b"])
    plan_grid(engine, ["m-a"], prompts=("plain", "terse"))
    plan_grid(engine, ["m-b"], prompts=("plain", "terse"))
    plan_grid(engine, ["m-a"], prompts=("polite", "only"))  # m-a again, planned last
    log: list = []
    summary = run_worker(engine, progress=log.append)
    assert (summary.done, summary.models_loaded, summary.samples) == (6, 2, 1200)
    assert [e.model for e in log if isinstance(e, ModelLoading)] == ["m-a", "m-b"]
    assert [e.model for e in log if isinstance(e, UnitDone)] == ["m-a"] * 4 + ["m-b"] * 2
    assert [e.unit for e in log if isinstance(e, UnitClaimed)] == [
        e.unit for e in log if isinstance(e, UnitDone)]
    assert summary.exit_reason == "no unit pending or claimable"
    assert statuses(engine) == {"done": 6}


def test_a_worker_stores_what_catalog_ingest_stores(engine, tmp_path, tmp_path_factory):
    """Same table, same grid and seed: plan + worker here, ingest in another database."""
    from catalog.db import open_catalog

    path = table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"])
    run_worker(engine)
    other = open_catalog(f"sqlite:///{tmp_path_factory.mktemp('other') / 'c.db'}")
    table_models(other, path.parent, ["m-a"])
    run_ingest(other, grid(["m-a"]))
    assert counts(other) == counts(engine) and len(counts(engine)) > 8
    other.dispose()


def test_a_failing_unit_ends_failed_after_max_attempts_and_the_rest_are_done(engine, tmp_path):
    texts = {p.key: p.text for p in bundled_task("digit").prompts}
    table_models(engine, tmp_path, ["m-a"], table={"prompts": {texts["plain"]: {"7": 1.0}}})
    plan_grid(engine, ["m-a"], prompts=("plain", "terse"))
    log: list = []
    summary = run_worker(engine, WorkerOptions(max_attempts=2), progress=log.append)
    assert (summary.done, summary.retried, len(summary.failed)) == (1, 1, 1)
    assert "terse" in summary.failed[0] and "no distribution for prompt" in summary.failed[0]
    failures = [e for e in log if isinstance(e, UnitFailed)]
    assert [e.final for e in failures] == [False, True]
    assert all(e.unit.startswith("digit/terse") and "no distribution for prompt" in e.error
               for e in failures)
    with engine.connect() as conn:
        failed = conn.execute(text(
            "SELECT attempts, error FROM runs WHERE status = 'failed'")).one()
    assert failed.attempts == 2 and "no distribution for prompt" in failed.error
    assert statuses(engine) == {"done": 1, "failed": 1}


def test_max_units_stops_the_worker_and_model_filters_narrow_it(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a", "m-b"])
    plan_grid(engine, ["m-a", "m-b"], prompts=("plain", "terse", "polite"))
    first = run_worker(engine, WorkerOptions(max_units=2))
    assert first.done == 2 and first.exit_reason == "--max-units 2 reached"
    only_b = run_worker(engine, WorkerOptions(models=["m-b"]))
    assert only_b.done == 3
    assert statuses(engine) == {"done": 5, "pending": 1}
    with pytest.raises(NotFound, match="no model named 'nope'"):
        Worker(engine, WorkerOptions(models=["nope"]))


def test_an_idle_worker_waits_for_new_units(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    planner = threading.Timer(0.3, plan_grid, args=(engine, ["m-a"]),
                              kwargs={"prompts": ("plain",)})
    planner.start()
    summary = run_worker(engine, WorkerOptions(idle_exit=1.5))
    planner.join()
    assert summary.done == 1 and statuses(engine) == {"done": 1}
    assert summary.seconds >= 1.5  # then it waited idle again before exiting


def test_a_prompt_that_renders_differently_than_planned_is_refused(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompts SET template = 'Pick a digit, any digit.' "
                          "WHERE key = 'plain'"))
    summary = run_worker(engine, WorkerOptions(max_attempts=1))
    assert summary.done == 0 and "renders differently" in summary.failed[0]
    assert scalar(engine, "SELECT COUNT(*) FROM option_counts") == 0


@pytest.mark.parametrize("options, message", [
    (dict(lease_seconds=0.5), "lease"), (dict(max_attempts=0), "attempts"),
    (dict(idle_exit=-1), "idle"),
])
def test_bad_worker_options_are_one_clear_line(options, message):
    with pytest.raises(InvalidInput, match=message):
        WorkerOptions(**options)


@pytest.mark.parametrize("options, message", [
    (dict(device="tpu"), "device 'tpu'"), (dict(dtype="float8"), "dtype 'float8'"),
    (dict(batch_size=0), "batch size"), (dict(batch_size=True), "batch size"),
])
def test_bad_load_options_are_one_clear_line(options, message):
    with pytest.raises(InvalidInput, match=message):
        LoadOptions(**options)


class RecordingTable(TableBackend):
    """The table backend, recording how many units each sample_many call got."""

    calls: list[int] = []

    def sample_many(self, requests):
        RecordingTable.calls.append(len(requests))
        return super().sample_many(requests)


@pytest.fixture
def recording_table():
    RecordingTable.calls = []
    register_backend("recording-table", RecordingTable)
    yield RecordingTable
    BACKENDS.pop("recording-table")


def test_a_batching_backend_gets_its_units_per_call_at_once(engine, tmp_path, recording_table,
                                                            tmp_path_factory):
    """units_per_call=3: 4 units of each model are sampled 3 + 1; each unit keeps its own
    seed, so the counts are those of a worker taking one unit at a time."""
    from catalog.db import open_catalog

    path = table_models(engine, tmp_path, ["m-a", "m-b"], backend_options={"units_per_call": 3})
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET backend = 'recording-table'"))
    plan_grid(engine, ["m-a", "m-b"], prompts=DIGIT_PROMPTS[:4])
    summary = run_worker(engine)
    assert (summary.done, summary.models_loaded) == (8, 2)
    assert recording_table.calls == [3, 1, 3, 1]
    assert statuses(engine) == {"done": 8}
    with engine.connect() as conn:
        records = [json.loads(v) if isinstance(v, str) else v for v in conn.execute(text(
            "SELECT library_versions FROM runs ORDER BY id")).scalars()]
    calls = [record["backend"].get("call_runs") for record in records]
    assert calls == [[1, 2, 3]] * 3 + [None] + [[5, 6, 7]] * 3 + [None]
    one_by_one = open_catalog(f"sqlite:///{tmp_path_factory.mktemp('one') / 'c.db'}")
    table_models(one_by_one, path.parent, ["m-a", "m-b"])
    plan_grid(one_by_one, ["m-a", "m-b"], prompts=DIGIT_PROMPTS[:4])
    run_worker(one_by_one)
    assert counts(one_by_one) == counts(engine) and len(counts(engine)) > 8
    one_by_one.dispose()


def test_max_units_caps_a_batch(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"], backend_options={"units_per_call": 4})
    plan_grid(engine, ["m-a"], prompts=DIGIT_PROMPTS[:6])
    summary = run_worker(engine, WorkerOptions(max_units=3))
    assert summary.done == 3 and statuses(engine) == {"done": 3, "pending": 3}


def test_a_bad_unit_in_a_batch_fails_alone(engine, tmp_path):
    """The table has no answer for the 'terse' prompt: its batch fails, is sampled again
    unit by unit, and only 'terse' ends failed."""
    texts = {p.key: p.text for p in bundled_task("digit").prompts}
    table = {"prompts": {texts[key]: {"7": 1.0} for key in ("plain", "polite", "only")}}
    table_models(engine, tmp_path, ["m-a"], table=table, backend_options={"units_per_call": 4})
    plan_grid(engine, ["m-a"], prompts=("plain", "terse", "polite", "only"))
    summary = run_worker(engine, WorkerOptions(max_attempts=1))
    assert summary.done == 3 and len(summary.failed) == 1 and "terse" in summary.failed[0]
    assert statuses(engine) == {"done": 3, "failed": 1}


def test_a_worker_stores_why_each_invalid_sample_is_invalid(engine, tmp_path):
    table = {"default": {"7": 0.4, "12": 0.2, "3 or 4": 0.2, "banana": 0.1,
                         "I think 3. Actually 5 is better": 0.1}, "prompts": {}}
    table_models(engine, tmp_path, ["m-a"], table=table)
    plan_grid(engine, ["m-a"], prompts=("plain",), n=500)
    run_worker(engine)
    with engine.connect() as conn:
        run = conn.execute(text(
            "SELECT n_valid, n_invalid, n_no_answer, n_ambiguous, n_off_category, "
            "n_out_of_range, normalizer_version FROM v_runs")).one()
        reasons = dict(conn.execute(text(
            "SELECT text, invalid_reason FROM completions")).all())
    assert reasons == {"7": None, "12": "out_of_range", "3 or 4": "no_answer",
                       "banana": "no_answer", "I think 3. Actually 5 is better": "ambiguous"}
    assert run.n_no_answer + run.n_ambiguous + run.n_out_of_range == run.n_invalid > 0
    assert run.n_off_category == 0 and run.n_valid + run.n_invalid == 500
    assert run.normalizer_version == "4"
