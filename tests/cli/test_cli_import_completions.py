"""``catalog import-completions`` (and import-counts' --map / --set) through the CLI, on
SQLite and PostgreSQL: a vLLM output file mapped by options, one ``Error:`` line for a bad
record with the store left as it was."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl

from click.testing import CliRunner
from sqlalchemy import func, select

from catalog import db as catalog_db
from catalog.cli import main
from catalog.normalize import normalize
from catalog.schema import Base
from catalog.tasks import bundled_task
from catalog.views import read_view

# What `vllm` writes when each RequestOutput is dumped as one JSON line.
VLLM_LINES = [
    {"request_id": "0", "prompt": "Flip a coin. Answer with heads or tails only.",
     "prompt_token_ids": [1, 2, 3],
     "outputs": [{"index": i, "text": t, "token_ids": [7], "cumulative_logprob": -0.5,
                  "finish_reason": "stop"} for i, t in enumerate([" Heads", " tails", "Heads.", " edge"])]},
    {"request_id": "1", "prompt": "Heads or tails?",
     "outputs": [{"index": 0, "text": " tails", "token_ids": [8], "finish_reason": "length"}]},
]
SETS = ["--set", "family=lab", "--set", "stage=base", "--set", "model=lab-base", "--set", "task=coin"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sizes(db_url) -> dict[str, int]:
    engine = catalog_db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return {n: conn.execute(select(func.count()).select_from(t)).scalar()
                    for n, t in Base.metadata.tables.items()}
    finally:
        engine.dispose()


def write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_vllm_file_mapped_by_options(db_url, engine, tmp_path):
    path = write(tmp_path / "vllm.jsonl", VLLM_LINES)
    result = run("import-completions", path, "--map", "prompt=prompt_text", "--map",
                 "outputs=completions", *SETS, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: imported 2 records (5 distinct texts) as 2 runs")
    coin = bundled_task("coin")
    texts = [o["text"] for line in VLLM_LINES for o in line["outputs"]]
    valid = Counter(normalize(coin, t) for t in texts if normalize(coin, t) is not None)
    counts = read_view(engine, "v_counts").group_by("option").agg(pl.col("count").sum())
    assert dict(counts.rows()) == dict(valid)
    assert read_view(engine, "v_runs")["n_invalid"].sum() == len(texts) - valid.total()
    # The preset maps the same fields; importing the same file again doubles nothing.
    before = sizes(db_url)
    again = run("import-completions", path, "--preset", "vllm", *SETS, "--db", db_url)
    assert again.exit_code == 0 and "(2 replaced)" in again.output
    assert sizes(db_url) == before


def test_a_bad_record_is_one_error_line_and_stores_nothing(db_url, tmp_path):
    write(tmp_path / "good.jsonl", VLLM_LINES[:1])
    assert run("import-completions", tmp_path / "good.jsonl", "--preset", "vllm", *SETS,
               "--db", db_url).exit_code == 0
    before = sizes(db_url)
    bad = write(tmp_path / "bad.jsonl", [VLLM_LINES[1], {**VLLM_LINES[1], "outputs": "tails"}])
    result = run("import-completions", bad, "--preset", "vllm", *SETS, "--db", db_url)
    assert result.exit_code == 1
    assert result.output == (f"Error: {bad}: line 2, field completions: must be a list of texts "
                             '(or of objects with a "text")\n')
    assert sizes(db_url) == before
    result = run("import-completions", bad, "--map", "outputs", "--db", db_url)
    assert result.exit_code == 2 and "--map 'outputs': expected FIELD=COLUMN" in result.output
    result = run("import-completions", bad, "--preset", "sglang", "--db", db_url)
    assert result.exit_code == 2
    assert "'sglang' is not one of 'vllm', 'lm-eval', 'inspect'" in result.output


def test_import_counts_with_columns_given_on_the_command_line(db_url, engine, tmp_path):
    path = tmp_path / "flips.csv"
    path.write_text("outcome,n\nheads,3\ntails,5\n")
    result = run("import-counts", path, "--map", "outcome=option", "--map", "n=count",
                 "--set", "family=lab", "--set", "stage=sft", "--set", "model=lab-sft",
                 "--set", "task=coin", "--set", "prompt=plain", "--set", "temperature=0.7",
                 "--db", db_url)
    assert result.exit_code == 0, result.output
    assert read_view(engine, "v_runs").select("model", "temperature", "n_valid").rows() == [
        ("lab-sft", 0.7, 8)]
