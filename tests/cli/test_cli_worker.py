"""``catalog plan``, ``catalog worker`` and ``catalog status`` through the command line."""

from __future__ import annotations

import json
import signal
import time

from click.testing import CliRunner
from sqlalchemy import text

from catalog.cli import main
from catalog.tasks import bundled_task
from ingest.worker import WorkerOptions, run_worker
from table_workers import (
    DIGIT_TABLE, finish, plan_grid, scalar, start_worker, statuses, table_models, wait_until,
)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_plan_then_worker_then_plan_again(db_url, engine, tmp_path):
    table_models(engine, tmp_path, ["m-a", "m-b"])
    grid = ("--family", "fam", "--task", "digit,coin", "--prompt", "plain", "--prompt", "terse",
            "--samples", "40", "--seed", "2", "--db", db_url)
    first = invoke("plan", *grid)
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[0] == "8 units new, 0 already planned, 0 done"
    assert "catalog worker --db" in first.stdout
    assert invoke("plan", *grid).stdout.splitlines()[0] == "0 units new, 8 already planned, 0 done"
    worked = invoke("worker", "--db", db_url)
    assert worked.exit_code == 0, worked.output
    assert "8 units done (320 samples)" in worked.stdout, worked.stderr
    assert "2 model loads" in worked.stdout
    assert "no unit pending or claimable" in worked.stdout
    assert worked.stderr.count("40 samples in") == 8
    assert invoke("plan", *grid).stdout.strip() == "0 units new, 0 already planned, 8 done"


def test_an_experiment_file_registers_its_families_and_plans_them(db_url, engine, tmp_path):
    table = tmp_path / "answers.json"
    table.write_text(json.dumps(DIGIT_TABLE))
    experiment = tmp_path / "exp.toml"
    experiment.write_text(f"""
[[families]]
name = "lab"
  [[families.stages]]
  stage = "base"
  name = "lab-base"
  source = "{table}"
  backend = "table"
  [[families.stages]]
  stage = "sft"
  name = "lab-sft"
  source = "{table}"
  backend = "table"

[plan]
tasks = ["digit"]
prompts = ["plain", "polite", "terse"]
samples = 25
seed = 8
""")
    result = invoke("plan", "--experiment", str(experiment), "--samples", "30", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "6 units new, 0 already planned, 0 done"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT DISTINCT n_samples, seed FROM runs")).all()
    assert rows == [(30, 8)]  # the command line wins over the file


def test_bad_input_is_one_error_line_and_stores_nothing(db_url, engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    bad_plan = tmp_path / "bad.toml"
    bad_plan.write_text('[[families]]\nname = "x"\n[plan]\nsamplez = 3\n')
    for args, message in [
        (("plan", "--model", "nope", "--task", "digit"), "no model named 'nope'"),
        (("plan", "--experiment", str(bad_plan)), "unknown key(s) samplez"),
        (("worker", "--model", "nope"), "no model named 'nope'"),
        (("worker", "--lease-seconds", "0.1"), "lease must be at least 1 second"),
    ]:
        result = invoke(*args, "--db", db_url)
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    result = invoke("plan", "--model", "m-a", "--db", db_url)  # no --task: a usage error
    assert result.exit_code == 2 and "Error: name the tasks" in result.stderr
    result = invoke("worker", "--max-attempts", "0", "--db", db_url)  # click's type: usage
    assert result.exit_code == 2 and "Error: Invalid value for '--max-attempts': must be >= 1" \
        in result.stderr
    assert statuses(engine) == {}
    assert scalar(engine, "SELECT COUNT(*) FROM families") == 1


def test_a_unit_failing_max_attempts_times_is_failed_with_its_error_in_status(
    db_url, engine, tmp_path
):
    texts = {p.key: p.text for p in bundled_task("digit").prompts}
    table_models(engine, tmp_path, ["m-a"], table={"prompts": {texts["plain"]: {"7": 1.0}}})
    plan_grid(engine, ["m-a"], prompts=("plain", "terse"))
    worked = invoke("worker", "--max-attempts", "2", "--db", db_url)
    assert worked.exit_code == 0, worked.output
    assert "1 units done" in worked.stdout and "1 failed" in worked.stdout
    assert "will retry" in worked.stderr
    assert "failed: table model has no distribution" in worked.stderr
    table = invoke("status", "--db", db_url)
    assert table.exit_code == 0, table.output
    assert "1 done, 1 failed" in table.stdout
    error_line = next(line for line in table.stdout.splitlines() if "| terse" in line)
    assert "| failed" in error_line and "no distribution for prompt" in error_line
    document = json.loads(invoke("status", "--format", "json", "--db", db_url).stdout)
    assert document["totals"] == {"pending": 0, "running": 0, "done": 1, "failed": 1}
    assert document["groups"] == [{"family": "fam", "model": "m-a", "task": "digit",
                                   "pending": 0, "running": 0, "done": 1, "failed": 1}]
    [failed] = document["failed"]
    assert (failed["prompt"], failed["state"], failed["attempts"]) == ("terse", "failed", 2)
    assert "no distribution for prompt" in failed["error"]


def test_status_reports_throughput_and_an_eta(db_url, engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain", "terse", "polite", "only"))
    run_worker(engine, WorkerOptions(max_units=2))
    document = json.loads(invoke("status", "--format", "json", "--db", db_url).stdout)
    rate = document["throughput"]
    assert (rate["units_done"], rate["remaining"]) == (2, 2)
    assert rate["units_per_minute"] > 0 and rate["eta_seconds"] >= 0
    table = invoke("status", "--db", db_url).stdout
    assert "2 units done" in table and "2 to go, ETA" in table


def test_sigterm_releases_the_unit_being_sampled_and_exits_0(db_url, engine, tmp_path):
    """While it samples a long unit, status shows the worker, host and lease; on SIGTERM
    it gives the unit back (pending, attempt not counted) and exits 0 at once."""
    table_models(engine, tmp_path, ["m-a"], table=dict(DIGIT_TABLE, delay_seconds=30))
    plan_grid(engine, ["m-a"], prompts=("plain",))
    worker = start_worker(db_url, "--lease-seconds", "5")
    wait_until(lambda: statuses(engine) == {"running": 1})
    [running] = json.loads(invoke("status", "--format", "json", "--db", db_url).stdout)["running"]
    assert f":{worker.pid}:" in running["worker"] and running["host"]
    assert 0 < running["lease_left_seconds"] <= 5 and running["attempt"] == 1
    asked = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, output = finish(worker, timeout=20)
    assert code == 0, output
    assert time.monotonic() - asked < 10  # not the 30 seconds of the unit
    assert "released (stopping)" in output and "stopped on request" in output
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, attempts, claim_token FROM runs")).one()
    assert tuple(row) == ("pending", 0, None)
