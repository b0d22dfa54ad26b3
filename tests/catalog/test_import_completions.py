"""Importing raw generations (catalog/imports/completions.py), on SQLite and PostgreSQL.

Texts are normalized with the task's own normalizer, so each expected count is the task
normalizer applied to the file's texts (catalog.normalize.normalize), not a hand-written
number.
"""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sqlalchemy import func, select, text

from catalog import presets
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.enums import IMPORT_PRESETS
from catalog.errors import InvalidInput
from catalog.imports import PRESETS, import_completions, import_counts, import_unit_key
from catalog.imports import completions as completions_import
from catalog.normalize import get_normalizer, normalize
from catalog.records import FieldMap
from catalog.schema import Base, Completion, Run
from catalog.tasks import bundled_task
from catalog.views import read_view

DIGIT = bundled_task("digit")
# One record per generation; the same text twice, an invalid one, a NUL byte.
GENERATIONS = [
    {"family": "fam", "stage": "base", "model": "fam-base", "task": "digit", "prompt": "plain",
     "completion": " 7"},
    {"family": "fam", "stage": "base", "model": "fam-base", "task": "digit", "prompt": "plain",
     "completion": " 7", "count": 3},
    {"family": "fam", "stage": "base", "model": "fam-base", "task": "digit", "prompt": "plain",
     "completion": "I pick 5.\nQuestion: next"},
    {"family": "fam", "stage": "base", "model": "fam-base", "task": "digit", "prompt": "plain",
     "completion": "no idea", "count": 2},
    {"family": "fam", "stage": "base", "model": "fam-base", "task": "digit", "prompt": "plain",
     "completion": "4\x00"},
    # one record per prompt, with a list
    {"family": "fam", "stage": "sft", "model": "fam-sft", "task": "digit", "prompt": "terse",
     "completions": ["**3**", "3", "seven", "", "3"]},
]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def expected_counts(records) -> dict[tuple[str, str | None], int]:
    """(model, option) -> samples, by the digit task's normalizer."""
    counts: Counter = Counter()
    for record in records:
        texts = record.get("completions") or [record["completion"]] * record.get("count", 1)
        for completion in texts:
            counts[record["model"], normalize(DIGIT, completion)] += 1
    return dict(counts)


def stored_counts(engine) -> dict[tuple[str, str | None], int]:
    counts = {(r["model"], r["option"]): r["count"]
              for r in read_view(engine, "v_counts").iter_rows(named=True)}
    for run in read_view(engine, "v_runs").iter_rows(named=True):
        if run["n_invalid"]:
            counts[run["model"], None] = run["n_invalid"]
    return counts


def table_sizes(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(t)).scalar()
                for name, t in Base.metadata.tables.items()}


def test_generations_are_normalized_and_stored_as_completions_and_counts(engine, tmp_path):
    summary = import_completions(engine, write_jsonl(tmp_path / "g.jsonl", GENERATIONS))
    assert (summary.rows, summary.runs, summary.replaced_runs) == (6, 2, 0)
    assert summary.samples + summary.invalid == 1 + 3 + 1 + 2 + 1 + 5
    assert stored_counts(engine) == expected_counts(GENERATIONS)
    runs = read_view(engine, "v_runs").sort("model")
    assert runs["origin"].to_list() == ["import", "import"]
    assert (runs["n_valid"] + runs["n_invalid"]).to_list() == runs["n_samples"].to_list()
    with session_scope(engine) as session:
        texts = dict(session.execute(
            select(Completion.text, Completion.count).join(Run).where(Run.prompt.has(key="plain"))
        ).all())
        run = session.scalars(select(Run).where(Run.n_invalid > 0).order_by(Run.id)).first()
        assert run.normalizer_version == get_normalizer("integer").version
        assert run.condition == {"mode": "sampled",
                                                                   "imported": True}
    # Equal texts are one completion row; PostgreSQL cannot store NUL: it becomes U+FFFD.
    assert texts == {" 7": 4, "I pick 5.\nQuestion: next": 1, "no idea": 2, "4\ufffd": 1}


def test_importing_the_same_file_twice_doubles_nothing(engine, tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GENERATIONS)
    import_completions(engine, path)
    before, sizes = stored_counts(engine), table_sizes(engine)
    assert import_completions(engine, path).replaced_runs == 2
    assert stored_counts(engine) == before and table_sizes(engine) == sizes


def test_csv_and_parquet_give_what_jsonl_gives(engine, tmp_path):
    singles = [r for r in GENERATIONS if "completion" in r]
    frame = pl.DataFrame(singles, schema={
        "family": pl.String, "stage": pl.String, "model": pl.String, "task": pl.String,
        "prompt": pl.String, "completion": pl.String, "count": pl.Int64,
    })
    frame.write_parquet(tmp_path / "g.parquet")
    import_completions(engine, tmp_path / "g.parquet")
    from_parquet = stored_counts(engine)
    frame.write_csv(tmp_path / "g.csv")  # re-imports replace the runs
    import_completions(engine, tmp_path / "g.csv")
    assert stored_counts(engine) == from_parquet == expected_counts(singles)
    # A CSV cell may hold a JSON list of texts.
    lists = pl.DataFrame({"family": ["fam"], "stage": ["sft"], "model": ["fam-sft"],
                          "task": ["digit"], "prompt": ["terse"],
                          "completions": [json.dumps(GENERATIONS[-1]["completions"])]})
    lists.write_csv(tmp_path / "lists.csv")
    import_completions(engine, tmp_path / "lists.csv")
    assert {k: v for k, v in stored_counts(engine).items() if k[0] == "fam-sft"} == {
        k: v for k, v in expected_counts(GENERATIONS).items() if k[0] == "fam-sft"}


def test_condition_columns_make_separate_runs(engine, tmp_path):
    records = [dict(r, temperature=0.7, top_p=0.9) for r in GENERATIONS[:2]]
    records += [dict(r, temperature=1.0, max_new_tokens=8, scaffold="fewshot@1")
                for r in GENERATIONS[:2]]
    import_completions(engine, write_jsonl(tmp_path / "g.jsonl", records))
    runs = read_view(engine, "v_runs").sort("temperature")
    assert runs.select("temperature", "top_p", "top_k", "max_new_tokens", "n_valid").rows() == [
        (0.7, 0.9, None, None, 4), (1.0, None, None, 8, 4)]
    warm = Condition.sampled(temperature=1.0, top_p=None, top_k=None, max_new_tokens=8,
                             scaffold="fewshot@1")
    assert warm.key in runs["condition_key"].to_list()
    with session_scope(engine) as session:
        keys = set(session.scalars(select(Run.unit_key)))
    assert import_unit_key("fam-base", "digit", "plain", warm.key) in keys


def test_records_split_between_chunks_are_merged(engine, tmp_path, monkeypatch):
    """Blocks of a few lines: a run's texts come in several chunks and are merged."""
    path = write_jsonl(tmp_path / "g.jsonl", GENERATIONS * 3)
    import_completions(engine, path)
    whole = stored_counts(engine)
    with engine.connect() as conn:
        texts = conn.execute(text("SELECT text, count FROM completions ORDER BY text")).all()
    monkeypatch.setattr(completions_import, "_BLOCK_BYTES", 150)
    summary = import_completions(engine, path)
    assert summary.replaced_runs == 2 and stored_counts(engine) == whole
    with engine.connect() as conn:
        assert conn.execute(text("SELECT text, count FROM completions ORDER BY text")).all() == texts
    assert summary.texts == len(texts)


def test_a_vllm_output_file_with_the_preset(engine, tmp_path):
    lines = [
        {"request_id": "0", "prompt": "Pick a random digit from 0 to 9.", "prompt_token_ids": [1],
         "outputs": [{"index": 0, "text": " 7", "token_ids": [5], "finish_reason": "stop"},
                     {"index": 1, "text": " 3", "token_ids": [6], "finish_reason": "stop"}]},
        {"request_id": "1", "prompt": "Any digit, 0-9?",
         "outputs": [{"index": 0, "text": " 9", "cumulative_logprob": -1.5}]},
    ]
    fields = FieldMap.parse(sets=["family=fam", "stage=base", "model=fam-base", "task=digit"])
    summary = import_completions(engine, write_jsonl(tmp_path / "vllm.jsonl", lines),
                                 preset="vllm", fields=fields)
    assert (summary.rows, summary.runs, summary.samples) == (2, 2, 3)
    runs = read_view(engine, "v_runs").sort("prompt_id")
    # A known prompt text gets its key; a new one a key made from the text.
    assert runs["prompt"][0] == "plain"
    assert runs["prompt"][1].startswith("text-") and runs["prompt_text"][1] == "Any digit, 0-9?"
    assert sorted(read_view(engine, "v_counts")["option"].to_list()) == ["3", "7", "9"]
    with pytest.raises(InvalidInput, match="unknown preset 'sglang'; the presets are: vllm, lm-eval, inspect"):
        import_completions(engine, tmp_path / "vllm.jsonl", preset="sglang")
    assert set(PRESETS) | set(presets.READERS) == set(IMPORT_PRESETS)


# The bad file's first record; its second is the bad one.
FIRST = {**GENERATIONS[0], "prompt": "mine", "prompt_text": "Pick a digit."}


def _line(**changes):
    return {**FIRST, **changes}


BAD_RECORDS = {
    "not JSON": ("{oops\n", "line 2: not valid JSON"),
    "not an object": ("[1, 2]\n", "line 2: a record must be a JSON object, got list"),
    "missing family": (_line(family=None), "line 2, field family: empty; every record needs a value"),
    "no prompt": (_line(prompt=None, prompt_text=None), "line 2, field prompt: empty; every record needs a prompt key or a prompt_text"),
    "no text": (_line(completion=None), "line 2, field completion: empty; every record needs a completion text"),
    "both": (_line(completions=["1"]), "line 2, field completions: a record has completion or completions, not both"),
    "count with a list": ({**GENERATIONS[-1], "count": 2}, "line 2, field count: goes with completion"),
    "empty list": ({**GENERATIONS[-1], "completions": []}, "line 2, field completions: an empty list"),
    "null text": ({**GENERATIONS[-1], "completions": ["1", None]}, "line 2, field completions: holds a null"),
    "not a list": ({**GENERATIONS[-1], "completions": "7"}, "line 2, field completions: must be a list of texts"),
    "zero count": (_line(count=0), "line 2, field count: 0 is too small; use a number >= 1"),
    "text count": (_line(count="many"), "line 2, field count: 'many' is not a whole number"),
    "fractional count": (_line(count=1.5), "line 2, field count: '1.5' is not a whole number"),
    "unknown stage": (_line(stage="ppo"), "line 2, field stage: unknown stage name 'ppo' with no stage_order"),
    "negative step": (_line(step=-1), "line 2, field step: -1 is negative"),
    "model in two stages": (_line(stage="sft"), "line 2, field stage: 'sft' differs from an earlier row (one model is one stage)"),
    "two texts for a prompt": (_line(prompt_text="Other words."), "line 2, field prompt_text: 'Other words.' differs from an earlier row"),
    "cold temperature": (_line(temperature=0), "line 2, field temperature: 0.0 must be > 0"),
    "text temperature": (_line(temperature="warm"), "line 2, field temperature: 'warm' is not a number"),
    "top_p above one": (_line(top_p=1.5), "line 2, field top_p: 1.5 must be in (0, 1]"),
    "zero max_new_tokens": (_line(max_new_tokens=0), "line 2, field max_new_tokens: 0 is too small"),
    "long model name": (_line(model="m" * 201), "line 2, field model: longer than 200 characters"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_a_bad_record_fails_the_whole_file(engine, tmp_path, case):
    bad, message = BAD_RECORDS[case]
    import_completions(engine, write_jsonl(tmp_path / "earlier.jsonl", GENERATIONS[-1:]))
    before, sizes = stored_counts(engine), table_sizes(engine)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(FIRST) + "\n" + (bad if isinstance(bad, str) else json.dumps(bad) + "\n")
                    + json.dumps(GENERATIONS[1]) + "\n")
    with pytest.raises(InvalidInput) as info:
        import_completions(engine, path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)
    assert table_sizes(engine) == sizes and stored_counts(engine) == before


def test_blank_lines_keep_line_numbers(engine, tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("\n" + json.dumps(GENERATIONS[0]) + "\n  \n" + json.dumps(_line(count=-2)) + "\n")
    with pytest.raises(InvalidInput, match=r"g.jsonl: line 4, field count: -2 is too small"):
        import_completions(engine, path)


def test_csv_errors_name_row_and_line_after_multiline_texts(engine, tmp_path):
    frame = pl.DataFrame([GENERATIONS[2], _line(count="x")]).select(
        "family", "stage", "model", "task", "prompt", "completion", pl.col("count").cast(pl.String))
    frame.write_csv(tmp_path / "g.csv")  # the first completion spans two lines
    with pytest.raises(InvalidInput, match=r"g.csv: row 2 \(line 4\), column count: 'x'"):
        import_completions(engine, tmp_path / "g.csv")


def test_unreadable_files_and_headers(engine, tmp_path):
    with pytest.raises(InvalidInput, match="completions files are .csv, .jsonl, .ndjson or .parquet"):
        import_completions(engine, tmp_path / "g.txt")
    pl.DataFrame({"family": ["f"], "stage": ["base"], "model": ["m"], "task": ["digit"],
                  "prompt": ["p"]}).write_csv(tmp_path / "g.csv")
    with pytest.raises(InvalidInput, match="missing column\\(s\\) completion or completions"):
        import_completions(engine, tmp_path / "g.csv")
    with pytest.raises(InvalidInput, match="'colour' is not a column of these imports"):
        import_completions(engine, tmp_path / "g.csv", fields=FieldMap.parse(["x=colour"]))
    with pytest.raises(InvalidInput, match="the file has a family column and --set gives it too"):
        import_completions(engine, tmp_path / "g.csv", fields=FieldMap.parse(sets=["family=x"]))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInput, match="no rows to import"):
        import_completions(engine, tmp_path / "empty.jsonl")


def test_completions_and_counts_of_one_run_replace_each_other(engine, tmp_path):
    import_completions(engine, write_jsonl(tmp_path / "g.jsonl", GENERATIONS[:1]))
    counts = pl.DataFrame({"family": ["fam"], "stage": ["base"], "model": ["fam-base"],
                           "task": ["digit"], "prompt": ["plain"], "option": ["2"], "count": [9]})
    counts.write_csv(tmp_path / "c.csv")
    assert import_counts(engine, tmp_path / "c.csv").replaced_runs == 1
    assert_frame_equal(read_view(engine, "v_counts").select("option", "count"),
                       pl.DataFrame({"option": ["2"], "count": [9]}))
    assert table_sizes(engine)["completions"] == 0
