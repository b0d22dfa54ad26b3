"""Ingest jobs (ingest/jobs.py): units, resume, no doubling, failures, kill, many workers.

These use the "table" backend (a fixed answer distribution given as data) so that the job
layer is tested fast on both databases; sampling from real models is tested in
tests/ingest/test_sampling.py and end to end in tests/cli/test_cli_ingest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from catalog.db import session_scope
from catalog.errors import InvalidInput, NotFound
from catalog.registry import add_model
from catalog.schema import Completion, ExactProb, OptionCount, Run
from ingest.backends import SamplingParams
from ingest.jobs import run_ingest
from ingest.planning import IngestRequest, unit_seed

DIGIT_TABLE = {
    "default": {"7": 0.5, " 3": 0.2, "Sure! Here's a random digit: 4": 0.2, "banana": 0.1},
    "prompts": {},
}


def write_table(tmp_path: Path, table: dict, name: str = "table.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(table))
    return str(path)


def register(engine, source: str, name: str = "m-sft", family: str = "fam", stage: str = "sft"):
    """Register the table file ``source`` as a model of the "table" backend."""
    with session_scope(engine) as session:
        add_model(session, name=name, family=family, stage=stage, source=source, backend="table")


def request(**overrides) -> IngestRequest:
    fields = dict(models=["m-sft"], tasks=["digit"], prompts=["plain", "polite", "terse"],
                  seed=11, params=SamplingParams(n=500, max_new_tokens=8))
    fields.update(overrides)
    return IngestRequest(**fields)


def counts_by_prompt(engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT prompt, option, count FROM v_counts")).all()
    return {(r.prompt, r.option): r.count for r in rows}


def test_ingest_stores_counts_completions_and_provenance(engine, tmp_path):
    register(engine, write_table(tmp_path, DIGIT_TABLE))
    summary = run_ingest(engine, request())
    assert (summary.units, summary.done, summary.already_done) == (3, 3, 0)
    with session_scope(engine) as session:
        runs = session.scalars(select(Run)).all()
        assert {r.status for r in runs} == {"done"}
        for run in runs:
            valid = session.scalar(
                select(func.sum(OptionCount.count)).where(OptionCount.run_id == run.id)
            )
            raw = session.scalar(select(func.sum(Completion.count)).where(Completion.run_id == run.id))
            assert valid + run.n_invalid == raw == 500
            assert run.n_invalid > 0  # "banana" is not a digit
            assert run.rendered_prompt and len(run.rendered_prompt_hash) == 64
            assert run.model_revision.startswith("sha256:")
            assert run.normalizer_version and run.catalog_version and run.host
            assert run.wall_seconds is not None and run.finished_at is not None
        options = set(session.scalars(select(OptionCount.option)))
    assert options == {"7", "3", "4"}


def test_running_again_does_nothing_and_never_doubles(engine, tmp_path):
    register(engine, write_table(tmp_path, DIGIT_TABLE))
    run_ingest(engine, request())
    before = counts_by_prompt(engine)
    summary = run_ingest(engine, request())
    assert (summary.done, summary.already_done) == (0, 3)
    assert counts_by_prompt(engine) == before


def test_a_changed_parameter_is_a_different_unit(engine, tmp_path):
    register(engine, write_table(tmp_path, DIGIT_TABLE))
    run_ingest(engine, request())
    summary = run_ingest(engine, request(params=SamplingParams(n=500, temperature=0.7)))
    assert summary.done == 3
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM runs")).scalar() == 6


def test_same_seed_gives_same_counts_in_another_database(engine, tmp_path, tmp_path_factory):
    from catalog.db import open_catalog

    source = write_table(tmp_path, DIGIT_TABLE)
    register(engine, source)
    run_ingest(engine, request())
    other = open_catalog(f"sqlite:///{tmp_path_factory.mktemp('other') / 'c.db'}")
    register(other, source)
    run_ingest(other, request())
    assert counts_by_prompt(other) == counts_by_prompt(engine)
    run_ingest(other, request(seed=12))
    with other.connect() as conn:
        seeds = conn.execute(text("SELECT DISTINCT seed FROM runs")).scalars().all()
    assert sorted(seeds) == [11, 12]
    other.dispose()


def test_unit_seeds_differ_between_units_and_seeds():
    assert unit_seed(1, "a" * 64) != unit_seed(1, "b" * 64) != unit_seed(2, "b" * 64)
    assert 0 <= unit_seed(1, "a" * 64) < 2**63


def test_exact_mode_is_stored_apart_from_sampled_counts(engine, tmp_path):
    register(engine, write_table(tmp_path, DIGIT_TABLE))
    run_ingest(engine, request(mode="exact"))
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(OptionCount)) == 0
        probs = session.execute(select(ExactProb.option, ExactProb.probability)).all()
        masses = session.scalars(select(Run.covered_mass)).all()
    by_option: dict[str, float] = {}
    for option, p in probs:
        by_option[option] = p  # same table for every prompt
    assert by_option["7"] == pytest.approx(1.0)  # only "7" is exactly an option's form
    assert masses == [pytest.approx(0.5)] * 3
    with engine.connect() as conn:
        modes = conn.execute(text("SELECT DISTINCT mode FROM v_distributions")).scalars().all()
    assert modes == ["exact"]


def test_exact_mode_refuses_open_tasks(engine, tmp_path):
    register(engine, write_table(tmp_path, DIGIT_TABLE))
    with pytest.raises(InvalidInput, match="closed task"):
        run_ingest(engine, request(mode="exact", tasks=["animal"], prompts=[]))


def test_unknown_model_task_and_prompt_are_named(engine, tmp_path):
    register(engine, write_table(tmp_path, DIGIT_TABLE))
    with pytest.raises(NotFound, match="nope"):
        run_ingest(engine, request(models=["nope"]))
    with pytest.raises(NotFound, match="no task named 'nope'"):
        run_ingest(engine, request(tasks=["nope"]))
    with pytest.raises(NotFound, match="its prompts are"):
        run_ingest(engine, request(prompts=["nope"]))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM runs")).scalar() == 0


def test_a_failing_unit_is_recorded_and_the_rest_are_stored(engine, tmp_path):
    # No "default": prompts missing from the table make the backend raise.
    from catalog.tasks import bundled_task

    texts = {p.key: p.text for p in bundled_task("digit").prompts}
    table = {"prompts": {texts["plain"]: {"7": 1.0}, texts["polite"]: {"3": 1.0}}}
    register(engine, write_table(tmp_path, table))
    summary = run_ingest(engine, request())
    assert summary.done == 2 and len(summary.failed) == 1
    assert "terse" in summary.failed[0]
    with engine.connect() as conn:
        rows = {key: status for key, status in conn.execute(text(
            "SELECT p.key, r.status FROM runs r JOIN prompts p ON p.id = r.prompt_id"
        ))}
    assert rows == {"plain": "done", "polite": "done", "terse": "failed"}


def _ingest_command(db_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "catalog.cli", "ingest", "--db", db_url, "--model", "m-sft",
        "--task", "digit", "--samples", "300", "--seed", "5", *extra,
    ]


def test_killed_job_resumes_to_exactly_the_uninterrupted_counts(db_url, engine, tmp_path):
    """SIGKILL mid-job, run again: N samples per unit, no duplicates, same counts."""
    slow = dict(DIGIT_TABLE, delay_seconds=0.4)
    source = write_table(tmp_path, slow)
    register(engine, source)
    job = subprocess.Popen(_ingest_command(db_url), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                done = conn.execute(text("SELECT COUNT(*) FROM runs WHERE status='done'")).scalar()
            if done >= 3:
                break
            time.sleep(0.1)
        assert job.poll() is None, "the job ended before it could be killed"
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT status, COUNT(*) FROM runs GROUP BY status")).all()
    assert dict(statuses).get("done", 0) < 12, "the kill came too late to test anything"

    resumed = subprocess.run(_ingest_command(db_url), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with engine.connect() as conn:
        per_unit = conn.execute(text(
            "SELECT r.unit_key, r.status, r.n_invalid + COALESCE(SUM(oc.count), 0) AS total "
            "FROM runs r LEFT JOIN option_counts oc ON oc.run_id = r.id "
            "GROUP BY r.unit_key, r.status, r.n_invalid"
        )).all()
        completions = conn.execute(text("SELECT SUM(count) FROM completions")).scalar()
    assert len(per_unit) == 12  # the digit task's 12 prompts, each once
    assert {(r.status, r.total) for r in per_unit} == {("done", 300)}
    assert completions == 12 * 300

    # Exactly what an uninterrupted job with the same seed stores.
    from catalog.db import open_catalog

    fresh = open_catalog(f"sqlite:///{tmp_path / 'uninterrupted.db'}")
    register(fresh, source)  # the same model: its source is part of the unit key
    run_ingest(fresh, request(prompts=[], params=SamplingParams(n=300, max_new_tokens=24),
                              seed=5))
    assert counts_by_prompt(fresh) == counts_by_prompt(engine)
    fresh.dispose()


def test_two_workers_share_one_job(db_url, engine, tmp_path):
    register(engine, write_table(tmp_path, dict(DIGIT_TABLE, delay_seconds=0.05)))
    workers = [subprocess.Popen(_ingest_command(db_url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2500:] for _, err in outputs]
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT status, claimed_by FROM runs")).all()
        total = conn.execute(text("SELECT SUM(count) FROM completions")).scalar()
    assert len(runs) == 12 and {r.status for r in runs} == {"done"}
    assert total == 12 * 300
