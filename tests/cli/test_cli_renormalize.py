"""``catalog tasks add FILE --update`` then ``catalog renormalize`` after a real ingest, with
the model's directory deleted in between: re-normalization loads no model. On SQLite and
PostgreSQL."""

from __future__ import annotations

import shutil
from collections import Counter

from click.testing import CliRunner
from sqlalchemy import select, text, update

from catalog.cli import main
from catalog.normalize import normalize
from catalog.schema import Task
from catalog.tasks import parse_task_text
from catalog.views import read_view
from tiny_models import PROMPTS, cached_tiny_model

# The tiny model was trained to answer PROMPTS[0] ("Pick a random digit.") with digits,
# some in words around them ("Sure! 7", "I pick 5.").
TASK = """
name = "pick_digit"
kind = "closed"
options = {options}
normalizer = "choice"

[[prompts]]
key = "plain"
text = "{prompt}"
"""
DIGITS = [str(d) for d in range(10)]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def task_file(path, options):
    path.write_text(TASK.format(options=str(options).replace("'", '"'), prompt=PROMPTS[0]))
    return path


def stored(db_url) -> list:
    from catalog import db as catalog_db

    engine = catalog_db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return [conn.execute(text(f"SELECT * FROM {t} ORDER BY 1, 2")).all()
                    for t in ("runs", "completions", "option_counts", "tasks")]
    finally:
        engine.dispose()


def test_renormalize_after_an_update_loads_no_model(db_url, engine, tmp_path, tmp_path_factory):
    model_dir = tmp_path / "tiny-sft"
    shutil.copytree(cached_tiny_model(tmp_path_factory, train_steps=60), model_dir)
    assert run("tasks", "add", task_file(tmp_path / "task.toml", DIGITS), "--db", db_url).exit_code == 0
    assert run("models", "add", "tiny-sft", "--family", "tiny", "--stage", "sft", "--source",
               model_dir, "--db", db_url).exit_code == 0
    result = run("ingest", "--model", "tiny-sft", "--task", "pick_digit", "--samples", "300",
                 "--seed", "5", "--max-new-tokens", "6", "--db", db_url)
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        texts = conn.execute(text("SELECT text, count FROM completions")).all()
    before = read_view(engine, "v_counts").select("option", "count").rows()
    # Drop the option the model answered most often; derived from what it answered.
    top = max(before, key=lambda row: row[1])[0]
    shutil.rmtree(model_dir)  # renormalize must not need the model

    updated = task_file(tmp_path / "task.toml", [d for d in DIGITS if d != top])
    refused = run("tasks", "add", updated, "--db", db_url)
    assert refused.exit_code == 1 and "--update" in refused.output
    added = run("tasks", "add", updated, "--update", "--db", db_url)
    assert added.exit_code == 0, added.output
    assert "replaced options; 1 runs are stale" in added.output
    assert read_view(engine, "v_runs")["stale"].to_list() == [True]

    result = run("renormalize", "--task", "pick_digit", "--db", db_url)
    assert result.exit_code == 0, result.output
    old = parse_task_text(task_file(tmp_path / "old.toml", DIGITS).read_text())
    new = parse_task_text(updated.read_text())
    expected = Counter()
    for completion, count in texts:
        expected[normalize(new, completion)] += count
    moved = sum(count for completion, count in texts
                if normalize(new, completion) != normalize(old, completion))
    assert moved >= max(count for _, count in before)
    assert result.output.startswith(
        f"re-derived 1 runs from their completions: 1 changed ({moved:,} samples changed option), "
        "1 no longer stale")
    runs = read_view(engine, "v_runs")
    assert runs.select("n_invalid", "stale").row(0) == (expected.pop(None, 0), False)
    assert dict(read_view(engine, "v_counts").select("option", "count").rows()) == dict(expected)
    assert top not in dict(read_view(engine, "v_counts").select("option", "count").rows())

    snapshot = stored(db_url)
    again = run("renormalize", "--db", db_url)
    assert again.exit_code == 0 and "1 runs from their completions: 0 changed (0 samples" in again.output
    assert stored(db_url) == snapshot


def test_renormalize_errors_are_one_line(db_url):
    result = run("renormalize", "--task", "nope", "--db", db_url)
    assert result.exit_code == 1
    assert result.output == "Error: no stored task named 'nope'; see `catalog tasks list` and " \
                            "`catalog models list`\n"
    before = stored(db_url)
    result = run("renormalize", "--bundled", "--task", "nope", "--db", db_url)
    assert result.exit_code == 1 and result.output.startswith("Error: no stored task named")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert stored(db_url) == before


def test_renormalize_bundled_brings_a_stored_bundled_task_up_to_date(db_url, tmp_path):
    """A store whose animal task predates its vocabulary: `--bundled` stores the new
    definition, and "Butter." stops counting as an animal."""
    import json

    lines = [{"family": "fam", "stage": "sft", "model": "fam-sft", "task": "animal",
              "prompt": "plain", "completion": t, "count": n}
             for t, n in {"A red panda!": 3, "Butter.": 2}.items()]
    path = tmp_path / "gens.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert run("--db", db_url, "import-completions", path).exit_code == 0
    from catalog import db as catalog_db

    engine = catalog_db.make_engine(db_url)
    tasks = Task.__table__  # the JSON column reads and writes alike on both databases
    with engine.begin() as conn:  # the task as stored before it had a vocabulary
        spec = conn.execute(select(tasks.c.spec).where(tasks.c.name == "animal")).scalar_one()
        del spec["params"]["vocabulary"]
        conn.execute(update(tasks).where(tasks.c.name == "animal").values(spec=spec))
    run("--db", db_url, "renormalize")
    assert read_view(engine, "v_counts", model="fam-sft")["option"].sort().to_list() == [
        "butter", "red panda"]
    result = run("--db", db_url, "renormalize", "--bundled", "--task", "animal")
    assert result.exit_code == 0
    assert "updated bundled tasks: animal" in result.output
    assert read_view(engine, "v_counts", model="fam-sft")["option"].to_list() == ["red panda"]
    assert read_view(engine, "v_runs", model="fam-sft")["n_off_category"].to_list() == [2]
    engine.dispose()
