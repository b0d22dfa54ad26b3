"""Updating a stored task (registry.store_task) and re-deriving its runs' counts
(catalog/renormalize.py), on SQLite and PostgreSQL. The runs here come from imported
generations (no model); tests/cli/test_cli_renormalize.py does it after a real ingest."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sqlalchemy import select, text

from catalog import registry
from catalog.db import session_scope
from catalog.errors import InvalidInput, NotFound
from catalog.imports import import_completions, import_counts
from catalog.normalize import get_normalizer, normalize
from catalog.renormalize import renormalize
from catalog.schema import Run
from catalog.tasks import parse_task_text
from catalog.views import read_view

TASK = """
name = "pick"
kind = "closed"
options = {options}
normalizer = "choice"
[aliases]
{aliases}
[[prompts]]
key = "p1"
text = "Pick a, b or c."
{more}
"""
TEXTS = ["a", "b", "B!", "I pick b", "c", "cee", "a or b", "none"]


def spec(options='["a", "b", "c"]', aliases="", more=""):
    return parse_task_text(TASK.format(options=options, aliases=aliases, more=more))


def store(engine, task_spec, **kwargs):
    with session_scope(engine) as session:
        return registry.store_task(session, task_spec, **kwargs)


def import_texts(engine, tmp_path, family="fam"):
    lines = [{"family": family, "stage": "base", "model": f"{family}-base", "task": "pick",
              "prompt": "p1", "completion": t, "count": i + 1} for i, t in enumerate(TEXTS)]
    path = tmp_path / f"{family}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    import_completions(engine, path)


def counts(engine, model="fam-base") -> dict:
    stored = {r["option"]: r["count"]
              for r in read_view(engine, "v_counts", model=model).iter_rows(named=True)}
    stored[None] = read_view(engine, "v_runs", model=model)["n_invalid"].item()
    return stored


def expected(task_spec) -> dict:
    result = Counter()
    for i, t in enumerate(TEXTS):
        result[normalize(task_spec, t)] += i + 1
    result.setdefault(None, 0)
    return dict(result)


def database(engine) -> list:
    with engine.connect() as conn:
        return [conn.execute(text(f"SELECT * FROM {t} ORDER BY 1, 2")).all()
                for t in ("runs", "completions", "option_counts")]


def test_storing_a_task_again_keeps_its_prompts(engine):
    first = store(engine, spec())
    assert (first.created, first.prompts, first.changed) == (True, 1, ())
    again = store(engine, spec())
    assert (again.created, again.new_prompts, again.changed, again.stale_runs) == (False, 0, (), 0)
    appended = store(engine, spec(more='[[prompts]]\nkey = "p2"\ntext = "a, b or c?"'))
    assert (appended.prompts, appended.new_prompts, appended.changed) == (2, 1, ())
    with pytest.raises(InvalidInput, match="prompt 'p2' is stored .* but missing from the file"):
        store(engine, spec(), update=True)
    retexted = spec(more='[[prompts]]\nkey = "p2"\ntext = "Other words."')
    with pytest.raises(InvalidInput, match="prompt 'p2' is stored with a different text"):
        store(engine, retexted, update=True)


def test_changed_options_need_update_and_make_runs_stale(engine, tmp_path):
    store(engine, spec())
    import_texts(engine, tmp_path)
    before = database(engine)
    with pytest.raises(InvalidInput, match="task 'pick' is stored with other options, aliases; "
                       "add the file with --update .*1 stored runs become stale"):
        store(engine, spec('["a", "b", "c", "d"]', 'c = ["cee"]'))
    assert database(engine) == before
    updated = store(engine, spec('["a", "b", "c", "d"]', 'c = ["cee"]'), update=True)
    assert (updated.changed, updated.stale_runs) == (("options", "aliases"), 1)
    assert read_view(engine, "v_runs")["stale"].to_list() == [True]


def test_renormalize_rederives_counts_and_twice_changes_nothing(engine, tmp_path):
    store(engine, spec())
    import_texts(engine, tmp_path)
    assert counts(engine) == expected(spec())
    new = spec('["a", "c"]', 'c = ["cee"]')  # "b" is no option any more; "cee" means c
    store(engine, new, update=True)
    moved = sum(i + 1 for i, t in enumerate(TEXTS) if normalize(new, t) != normalize(spec(), t))
    assert moved > 0
    summary = renormalize(engine, tasks=["pick"])
    assert (summary.runs, summary.changed_runs, summary.changed_samples,
            summary.cleared_stale) == (1, 1, moved, 1)
    assert counts(engine) == expected(new)
    with session_scope(engine) as session:
        run = session.scalars(select(Run)).one()
        assert not run.stale and run.normalizer_version == get_normalizer("choice").version
    before = database(engine)
    again = renormalize(engine)
    assert (again.runs, again.changed_runs, again.changed_samples, again.cleared_stale) == (
        1, 0, 0, 0)
    assert database(engine) == before
    assert str(again).startswith("re-derived 1 runs from their completions: 0 changed")


def test_runs_without_completions_are_listed_and_left_alone(engine, tmp_path):
    store(engine, spec())
    import_texts(engine, tmp_path)
    (tmp_path / "c.csv").write_text(
        "family,stage,model,task,prompt,option,count\nlab,base,lab-base,pick,p1,b,4\n")
    import_counts(engine, tmp_path / "c.csv")
    store(engine, spec('["a", "c"]'), update=True)
    summary = renormalize(engine)
    assert (summary.runs, summary.without_completions) == (1, 1)
    assert summary.named == [f"lab-base pick/p1 (run {read_view(engine, 'v_runs', model='lab-base')['run_id'].item()})"]
    assert "left alone 1 runs without completions (imported counts): lab-base pick/p1" in str(summary)
    lab = read_view(engine, "v_runs", model="lab-base")
    assert lab["stale"].to_list() == [True] and counts(engine, "lab-base") == {"b": 4, None: 0}


def test_renormalize_selects_tasks_and_families(engine, tmp_path):
    store(engine, spec())
    import_texts(engine, tmp_path, "fam")
    import_texts(engine, tmp_path, "lab")
    store(engine, spec('["a", "c"]'), update=True)
    assert renormalize(engine, families=["lab"]).changed_runs == 1
    stale = {r["model"]: r["stale"] for r in read_view(engine, "v_runs").iter_rows(named=True)}
    assert stale == {"fam-base": True, "lab-base": False}
    assert renormalize(engine, tasks=["pick"], families=["fam", "lab"]).changed_runs == 1
    with pytest.raises(NotFound, match="no stored task named 'nope'"):
        renormalize(engine, tasks=["nope"])
    with pytest.raises(NotFound, match="no stored family named 'nope'"):
        renormalize(engine, families=["nope"])


def test_invalid_reasons_are_stored_and_renormalize_fills_them_in(engine, tmp_path):
    texts = {"7": 5, "12": 4, "3 or 4": 3, "banana": 2, "I think 3. Actually 5 is better": 1}
    lines = [{"family": "fam", "stage": "base", "model": "fam-base", "task": "digit",
              "prompt": "plain", "completion": t, "count": n} for t, n in texts.items()]
    path = tmp_path / "digits.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    import_completions(engine, path)
    reason_columns = ("n_no_answer", "n_ambiguous", "n_off_category", "n_out_of_range")
    runs = read_view(engine, "v_runs")
    assert runs.select(*reason_columns, "n_invalid").rows() == [(5, 1, 0, 4, 10)]
    with engine.begin() as conn:  # as a run normalized before reasons existed
        conn.execute(text("UPDATE runs SET n_no_answer = NULL, n_ambiguous = NULL, "
                          "n_off_category = NULL, n_out_of_range = NULL"))
        conn.execute(text("UPDATE completions SET invalid_reason = NULL"))
    renormalize(engine)
    assert read_view(engine, "v_runs").select(*reason_columns).rows() == [(5, 1, 0, 4)]
    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT text, invalid_reason FROM completions")).all())
    assert stored == {"7": None, "12": "out_of_range", "3 or 4": "no_answer",
                      "banana": "no_answer", "I think 3. Actually 5 is better": "ambiguous"}
