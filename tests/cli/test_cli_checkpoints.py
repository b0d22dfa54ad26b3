"""``catalog models add --step``, ``catalog models add-checkpoints`` and ``models list``.

Bad input exits with code 1 and one ``Error:`` line, and leaves the store as it was.
"""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from catalog import db as catalog_db
from catalog.cli import main
from catalog.schema import Model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def models(url: str) -> list[tuple]:
    engine = catalog_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                select(Model.name, Model.stage, Model.stage_order, Model.step, Model.source,
                       Model.revision, Model.prompt_format).order_by(Model.id)
            )]
    finally:
        engine.dispose()


def assert_one_error_line(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_models_add_registers_a_checkpoint_and_refuses_a_duplicate_step(db_url):
    result = run("models", "add", "olmo-base-1000", "--family", "olmo", "--stage", "base",
                 "--step", 1000, "--source", "allenai/OLMo-2-1124-7B",
                 "--revision", "stage1-step1000-tokens5B", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "olmo-base-1000: family olmo, stage base (order 0) step 1000, plain prompts, "
        "from allenai/OLMo-2-1124-7B"
    )
    before = models(db_url)
    assert before == [("olmo-base-1000", "base", 0, 1000, "allenai/OLMo-2-1124-7B",
                       "stage1-step1000-tokens5B", "plain")]
    result = run("models", "add", "olmo-base-1000b", "--family", "olmo", "--stage", "base",
                 "--step", 1000, "--source", "allenai/OLMo-2-1124-7B",
                 "--revision", "stage1-step1000-tokens4B", "--db", db_url)
    assert_one_error_line(
        result, "family 'olmo' already has step 1000 of stage 'base' (model 'olmo-base-1000'); "
        "each checkpoint of a stage needs its own step",
    )
    result = run("models", "add", "x", "--family", "olmo", "--stage", "base", "--step", -5,
                 "--source", "s", "--db", db_url)
    assert result.exit_code == 2 and "--step" in result.output  # a usage error
    assert models(db_url) == before


def test_add_checkpoints_registers_a_run_directory_and_list_shows_the_steps(db_url, tmp_path):
    run_dir = tmp_path / "sft-run"
    for step in (500, 1500, 1000):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
    (run_dir / "runs").mkdir()
    result = run("models", "add-checkpoints", "--family", "fam", "--stage", "sft",
                 "--source", run_dir, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "3 checkpoints of fam stage sft: steps 500 .. 1500"
    assert models(db_url) == [
        (f"fam-sft-step{step}", "sft", 1, step, str((run_dir / f"checkpoint-{step}").resolve()),
         None, "chat")
        for step in (500, 1000, 1500)
    ]
    assert run("models", "add", "fam-base", "--family", "fam", "--stage", "base",
               "--source", "org/base", "--db", db_url).exit_code == 0
    listed = run("models", "list", "--family", "fam", "--db", db_url)
    assert listed.exit_code == 0, listed.output
    rows = [[cell.strip() for cell in line.split("|")[1:-1]]
            for line in listed.output.splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0][:5] == ["family", "stage", "order", "step", "model"]
    assert [(r[1], r[3], r[4]) for r in rows[1:]] == [
        ("base", "", "fam-base"), ("sft", "500", "fam-sft-step500"),
        ("sft", "1000", "fam-sft-step1000"), ("sft", "1500", "fam-sft-step1500"),
    ]


def test_add_checkpoints_errors_leave_the_store_intact(db_url, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-100").mkdir(parents=True)
    assert run("models", "add", "hand-100", "--family", "fam", "--stage", "sft", "--step", 100,
               "--source", "org/x", "--db", db_url).exit_code == 0
    (run_dir / "checkpoint-50").mkdir()
    before = models(db_url)
    cases = [
        # step 100 is taken: not even checkpoint-50 is registered
        (["--source", run_dir], "already has step 100 of stage 'sft' (model 'hand-100')"),
        (["--source", tmp_path / "nope"], "is not a directory"),
        (["--source", tmp_path], "has no checkpoint-<step>/ folders"),
        (["--source", run_dir, "--revisions", "step"], "is a local directory"),
        (["--source", run_dir, "--backend", "nope"], "unknown backend 'nope'"),
        # the hub is out of reach here (and the repository does not exist anywhere)
        (["--source", "catalog-tests/no-such-repo", "--revisions", "^step"],
         "cannot list the branches of 'catalog-tests/no-such-repo' on the hub"),
    ]
    for extra, message in cases:
        result = run("models", "add-checkpoints", "--family", "fam", "--stage", "sft", *extra,
                     "--db", db_url)
        assert_one_error_line(result, message)
    assert models(db_url) == before
