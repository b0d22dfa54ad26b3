"""``catalog import-completions --preset lm-eval`` and ``--preset inspect`` on files those
tools really wrote (tests/data/tool_logs, with how they were made), on SQLite and
PostgreSQL: what is stored, and one ``Error:`` line with the store unchanged for bad files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select, text

from catalog import db as catalog_db
from catalog.cli import main
from catalog.normalize import normalize
from catalog.schema import Base
from catalog.tasks import bundled_task

LOGS = Path(__file__).resolve().parent.parent / "data" / "tool_logs"
LM_EVAL = LOGS / "samples_catalog_digit_2026-12-07T17-12-47.814964.jsonl"
INSPECT = LOGS / "inspect_digit_mockllm.json"
SETS = ["--set", "family=tiny", "--set", "stage=sft", "--set", "model=tiny-sft",
        "--set", "task=digit"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sizes(db_url) -> dict[str, int]:
    engine = catalog_db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return {n: conn.execute(select(func.count()).select_from(t)).scalar()
                    for n, t in Base.metadata.tables.items()}
    finally:
        engine.dispose()


def stored_runs(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT r.id, p.key, p.template, r.n_samples, r.n_invalid, r.temperature, r.top_p, "
            "r.top_k, r.max_new_tokens, r.origin FROM runs r JOIN prompts p ON "
            "p.id = r.prompt_id ORDER BY p.template")).all()


def completions(engine, run_id: int) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT text, count FROM completions WHERE run_id = :r"),
                            {"r": run_id}).all()
    return Counter({row.text: row.count for row in rows})


def test_an_lm_eval_log_samples_file_imports_every_repeat(db_url, engine):
    lines = [json.loads(line) for line in LM_EVAL.read_text().splitlines()]
    result = run("import-completions", LM_EVAL, "--preset", "lm-eval", *SETS, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{LM_EVAL}: imported 2 records")
    runs = stored_runs(engine)
    assert len(runs) == 2
    for run_row, line in zip(runs, sorted(lines, key=lambda x: x["arguments"]["gen_args_0"]
                                          ["arg_0"])):
        # the prompt is the context lm-eval gave the model; every repeat is a sample
        assert run_row.template == line["arguments"]["gen_args_0"]["arg_0"]
        assert completions(engine, run_row.id) == Counter(line["resps"][0])
        assert run_row.n_samples == 5 and run_row.origin == "import"
        assert (run_row.temperature, run_row.max_new_tokens) == (1.0, 8)
        assert run_row.top_p is None and run_row.top_k is None  # the file does not say
    before = sizes(db_url)
    again = run("import-completions", LM_EVAL, "--preset", "lm-eval", *SETS, "--db", db_url)
    assert again.exit_code == 0 and "(2 replaced)" in again.output
    assert sizes(db_url) == before


def test_an_inspect_eval_log_imports_every_epoch_and_choice(db_url, engine):
    log = json.loads(INSPECT.read_text())
    result = run("import-completions", INSPECT, "--preset", "inspect", *SETS, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{INSPECT}: imported 6 records")
    digit = bundled_task("digit")
    by_text = {prompt.text: prompt.key for prompt in digit.prompts}
    runs = stored_runs(engine)
    assert len(runs) == 2
    for run_row in runs:
        # the task's own prompts, found by their text
        assert run_row.key == by_text[run_row.template]
        expected = Counter(
            choice["message"]["content"] for sample in log["samples"]
            if sample["input"] == run_row.template for choice in sample["output"]["choices"])
        assert completions(engine, run_row.id) == expected
        assert run_row.n_samples == sum(expected.values()) == 6
        invalid = sum(c for t, c in expected.items() if normalize(digit, t) is None)
        assert run_row.n_invalid == invalid
        assert (run_row.temperature, run_row.top_p, run_row.max_new_tokens) == (1.0, 0.95, 8)


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_bad_tool_files_are_one_error_line_and_store_nothing(db_url, tmp_path):
    assert run("import-completions", INSPECT, "--preset", "inspect", *SETS,
               "--db", db_url).exit_code == 0
    before = sizes(db_url)
    first = json.loads(LM_EVAL.read_text().splitlines()[0])
    scored = {**first, "doc_id": 1, "arguments": {"gen_args_0": {"arg_0": "Q", "arg_1": " 7"}},
              "resps": [[[-1.2, True]]]}
    not_a_log = tmp_path / "other.json"
    not_a_log.write_text(json.dumps({"samples": []}))
    compressed = tmp_path / "run.eval"
    compressed.write_bytes(b"PK\x03\x04")
    cases = [
        (LM_EVAL, "lm-eval", ["--set", "family=tiny", "--set", "stage=sft", "--set", "task=digit"],
         f"Error: {LM_EVAL}: lm-eval record 1, field model: "),
        (write_lines(tmp_path / "scored.jsonl", [first, scored]), "lm-eval", SETS,
         f"Error: {tmp_path / 'scored.jsonl'}: line 2: not a generate_until sample"),
        (write_lines(tmp_path / "other.jsonl", [{"prompt": "x"}]), "lm-eval", SETS,
         f"Error: {tmp_path / 'other.jsonl'}: line 1: no arguments.gen_args_0.arg_0"),
        (INSPECT, "lm-eval", SETS, f"Error: {INSPECT}: --preset lm-eval reads .jsonl files"),
        (not_a_log, "inspect", SETS, f"Error: {not_a_log}: not an inspect eval log"),
        (compressed, "inspect", SETS,
         f"Error: {compressed}: an .eval log is read by inspect_ai (pip install inspect-ai)"),
        (tmp_path / "missing.json", "inspect", SETS, f"Error: {tmp_path / 'missing.json'}: "
         "no such file"),
    ]
    for path, preset, sets, message in cases:
        result = run("import-completions", path, "--preset", preset, *sets, "--db", db_url)
        assert result.exit_code == 1, (path, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (message, result.output)
        assert "Traceback" not in result.output and "catalog-preset-" not in result.output
    assert sizes(db_url) == before
