"""``catalog launch``: K real ``catalog worker`` processes through submitit's local executor
complete a plan; the Slurm configuration (sbatch lines, --slurm-arg checks) is checked on
the script submitit would submit, since this machine has no Slurm. The database URL reaches
the workers without a password showing in any output, log or pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from submitit.slurm.slurm import _make_sbatch_string
from table_workers import assert_whole_units, plan_grid, statuses, table_models

from catalog import db as catalog_db
from catalog.cli import main
from catalog.errors import InvalidInput
from ingest.launch import LaunchOptions, local_parameters, parse_slurm_args, parse_time, slurm_parameters

N = 40
PASSWORD = "s3cret-launch"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def planned(url: str, tmp_path: Path, models=("m-base", "m-sft")) -> int:
    """Table models and a plan of their digit units on ``url``; returns how many units."""
    engine = catalog_db.open_catalog(url)
    try:
        table_models(engine, tmp_path, models)
        plan_grid(engine, models, n=N)
        return statuses(engine)["pending"]
    finally:
        engine.dispose()


def test_two_local_workers_complete_a_plan_and_never_show_the_password(db_url, backend, tmp_path):
    units = planned(db_url, tmp_path)
    url = make_url(db_url)
    if backend == "postgresql":  # the test server trusts local logins, so any password works
        url = url.set(password=PASSWORD)
    logs = tmp_path / "logs"
    result = run("launch", "--executor", "local", "--workers", 2, "--wait", "--log-dir", logs,
                 "--time", "0:10:00", "--db", url.render_as_string(hide_password=False))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("launched 2 catalog worker(s) (local) on ")
    job_ids = lines[0].split("job id(s) ")[1].split(", ")
    assert len(job_ids) == 2 and all(job_id.isdigit() for job_id in job_ids)
    assert lines[1].startswith("database connections: 2 (one per worker")
    assert lines[2:] == [f"logs: {logs}/", f"progress: catalog status --db {catalog_db.masked(url)}"]
    engine = catalog_db.open_catalog(db_url)
    try:
        assert statuses(engine) == {"done": units}
        assert_whole_units(engine, N)
    finally:
        engine.dispose()
    worker_logs = sorted(logs.glob("*_log.out"))
    assert [path.name.split("_")[0] for path in worker_logs] == sorted(job_ids)
    for path in worker_logs:
        assert "Job completed successfully" in path.read_text()
    for path in [p for p in logs.rglob("*") if p.is_file()]:  # logs and pickles
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in result.output


def test_worker_options_after_the_double_dash_reach_every_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    units = planned(url, tmp_path, models=("m-sft",))
    result = run("launch", "--executor", "local", "--workers", 2, "--wait",
                 "--log-dir", tmp_path / "logs", "--db", url, "--", "--max-units", 1)
    assert result.exit_code == 0, result.output
    engine = catalog_db.open_catalog(url)
    try:
        assert statuses(engine) == {"done": 2, "pending": units - 2}
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "local", "--", "--idle-exti", "5"],
         "Error: worker options: No such option '--idle-exti'. Did you mean '--idle-exit'?"),
        (["--executor", "local", "--", "--db", "sqlite:///other.db"],
         "Error: leave --db out of the worker options: the workers use catalog launch's database"),
        (["--executor", "local", "--partition", "gpu"],
         "Error: --partition and --slurm-arg are for --executor slurm"),
        (["--executor", "local", "--time", "90"],
         "Error: --time '90' is not H:MM:SS; use e.g. 4:00:00 or 0:30:00"),
        (["--executor", "slurm", "--slurm-arg", "account"],
         "Error: --slurm-arg 'account' is not KEY=VALUE; use e.g. account=lab or mem=64G"),
        (["--executor", "slurm", "--slurm-arg", "time=1:00:00"],
         "Error: --slurm-arg time is not allowed: use --time"),
        (["--executor", "slurm"],
         "Error: Slurm workers need a shared PostgreSQL database (--db postgresql://...): a "
         "SQLite file on a network filesystem does not lock reliably"),
    ],
)
def test_bad_launches_are_one_line_and_submit_nothing(tmp_path, args, message):
    logs = tmp_path / "logs"
    result = run("launch", "--log-dir", logs, "--db", f"sqlite:///{tmp_path / 'c.db'}", *args)
    assert result.exit_code == 1
    assert result.output == message + "\n"
    assert not logs.exists()


def sbatch_script(options: LaunchOptions, folder: Path) -> list[str]:
    """The sbatch file submitit writes for the array (its own renderer: there is no Slurm
    here to build a SlurmExecutor against)."""
    command = "python -u -m submitit.core._submit " + str(folder)
    return _make_sbatch_string(command=command, folder=folder, map_count=options.workers,
                               **slurm_parameters(options)).splitlines()


def test_slurm_options_become_the_array_job_script(tmp_path):
    options = LaunchOptions(
        executor="slurm", workers=8, gpus_per_worker=1, partition="gpu", time="12:00:00",
        slurm_args=("account=lab", "mem=64G", "cpus_per_task=8"),
        worker_args=("--device", "cuda"),
    )
    lines = sbatch_script(options, tmp_path)
    for line in [
        "#SBATCH --array=0-7%8",  # one array task per worker, all at once
        "#SBATCH --partition=gpu",
        "#SBATCH --time=720",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --job-name=catalog-worker",
        "#SBATCH --account=lab",
        "#SBATCH --mem=64G",
        "#SBATCH --cpus-per-task=8",
    ]:
        assert line in lines
    assert not any("--gpus-per-node" in line for line in
                   sbatch_script(LaunchOptions(executor="slurm"), tmp_path))


def test_slurm_args_that_would_break_the_script_are_refused():
    assert parse_slurm_args(["account=lab", "mail_type=END"]) == {"account": "lab", "mail-type": "END"}
    for pair, message in [
        ("comment=a\nsrun rm -rf ~", "the value has a control character"),
        ("export=NONE", "export is not allowed"),
        ("output=/tmp/x", "use --log-dir"),
        ("Account=lab", "is not KEY=VALUE"),
        ("=lab", "is not KEY=VALUE"),
        ("mem=", "is not KEY=VALUE"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_slurm_args([pair])
    with pytest.raises(InvalidInput, match="given twice"):
        parse_slurm_args(["mem=1G", "mem=2G"])


def test_time_limits_round_up_to_minutes():
    assert [parse_time(t) for t in ("0:00:01", "0:30:00", "1:00:01", "12:00:00")] == [1, 30, 61, 720]
    for bad in ("90", "1:60:00", "0:00:00", "1:00"):
        with pytest.raises(InvalidInput, match="--time"):
            parse_time(bad)


def test_local_workers_get_gpus_of_their_own():
    options = LaunchOptions(executor="local", workers=3, gpus_per_worker=2)
    assert [local_parameters(options, i)["visible_gpus"] for i in range(3)] == [(0, 1), (2, 3), (4, 5)]
    cpu_only = local_parameters(LaunchOptions(executor="local"), 0)
    assert cpu_only["gpus_per_node"] == 0 and cpu_only["visible_gpus"] == ()
