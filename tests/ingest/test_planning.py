"""Planning (ingest/planning.py): a grid becomes pending units that hold what a worker needs;
planning again adds nothing; failed units are queued again; the planner renders with the
tokenizer alone, exactly as the loaded model does."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select, text

from catalog.db import session_scope
from catalog.errors import NotFound
from catalog.registry import add_model
from catalog.schema import Prompt, Run
from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.jobs import run_ingest
from ingest.planning import IngestRequest, plan, unit_seed
from ingest.queue import open_queue
from table_workers import grid, plan_grid, statuses, table_models
from tiny_models import cached_tiny_model


def test_a_plan_stores_pending_units_a_worker_can_run(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a", "m-b"])
    summary = plan_grid(engine, ["m-a", "m-b"], prompts=("plain", "polite"), n=50, seed=4)
    assert summary.line() == "4 units new, 0 already planned, 0 done"
    with session_scope(engine) as session:
        runs = session.execute(select(Run, Prompt.template).join(Prompt)).all()
    assert {run.status for run, _ in runs} == {"pending"}
    for run, template in runs:
        assert run.rendered_prompt == f"<|user|>\n{template}\n<|assistant|>\n"
        assert len(run.rendered_prompt_hash) == 64 and len(run.unit_key) == 64
        assert run.sampling["n"] == 50 and run.seed == 4 and run.n_samples == 50
        assert run.condition["temperature"] == 1.0 and len(run.condition_key) == 16
        assert run.attempts == 0 and run.claimed_by is None


def test_planning_again_adds_nothing_and_counts_what_is_there(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain", "polite", "terse"))
    before = statuses(engine)
    assert plan_grid(engine, ["m-a"], prompts=("plain", "polite", "terse")).line() == (
        "0 units new, 3 already planned, 0 done")
    assert statuses(engine) == before
    # A wider grid adds only its new units; a changed parameter is new units.
    wider = plan_grid(engine, ["m-a"], prompts=("plain", "polite", "terse", "only"))
    assert (wider.total("new"), wider.total("already_planned")) == (1, 3)
    assert plan_grid(engine, ["m-a"], prompts=("plain",), n=99).total("new") == 1


def test_done_and_failed_units_are_reported_and_failed_ones_queued_again(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    ids = plan_grid(engine, ["m-a"], prompts=("plain", "polite", "terse")).models[0].run_ids
    queue = open_queue(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE runs SET status = 'done' WHERE id = :id"), {"id": ids[0]})
        conn.execute(text("UPDATE runs SET status = 'failed', attempts = 3, error = 'boom' "
                          "WHERE id = :id"), {"id": ids[1]})
    again = plan_grid(engine, ["m-a"], prompts=("plain", "polite", "terse"))
    assert again.line() == "0 units new, 1 already planned, 1 done, 1 failed units queued again"
    assert statuses(engine) == {"done": 1, "pending": 2}
    claimed = [queue.claim_next("h:1:w", lease_seconds=60, max_attempts=3) for _ in range(2)]
    assert sorted(c.run_id for c in claimed) == ids[1:] and {c.attempts for c in claimed} == {1}


def test_a_model_whose_units_are_all_done_is_not_rendered_again(engine, tmp_path):
    path = table_models(engine, tmp_path, ["m-a"])
    run_ingest(engine, grid(["m-a"], prompts=("plain", "polite")))
    path.unlink()  # loading the table now fails: planning must not need it
    assert plan_grid(engine, ["m-a"], prompts=("plain", "polite")).line() == (
        "0 units new, 0 already planned, 2 done")


def test_unknown_names_are_refused_before_anything_is_stored(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    for request in (grid(["nope"]), grid(["m-a"], tasks=("nope",)), grid(["m-a"], prompts=("x",))):
        with pytest.raises(NotFound):
            plan(engine, request)
    assert statuses(engine) == {}


def test_unit_seeds_differ_between_units_and_seeds():
    assert unit_seed(1, "a" * 64) != unit_seed(1, "b" * 64) != unit_seed(2, "b" * 64)
    assert 0 <= unit_seed(1, "a" * 64) < 2**63


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory, train_steps=0)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # rendering is the point here
def test_the_planner_renders_with_the_tokenizer_alone_as_the_model_does(
    engine, tiny_model, tmp_path
):
    """Plan a model directory that has no weights: it works (only the tokenizer is read),
    and once the weights are there, `run_ingest` of the same grid finds the same units
    (its rendering through the loaded model gives the same keys) and samples them."""
    directory = tmp_path / "tiny"
    shutil.copytree(tiny_model, directory, ignore=shutil.ignore_patterns("*.safetensors*"))
    with session_scope(engine) as session:
        add_model(session, name="tiny-sft", family="tiny", stage="sft", source=str(directory))
        add_model(session, name="tiny-base", family="tiny", stage="base", source=str(directory),
                  prompt_format="plain")
    request = IngestRequest(families=["tiny"], tasks=["coin"], prompts=["plain", "polite"],
                            params=SamplingParams(n=20, max_new_tokens=4))
    assert plan(engine, request).line() == "4 units new, 0 already planned, 0 done"

    for weights in tiny_model.glob("*.safetensors*"):
        shutil.copy(weights, directory)
    backend = load_backend(ModelSpec(str(directory)), device="cpu")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT m.prompt_format, p.template, r.rendered_prompt FROM runs r "
            "JOIN models m ON m.id = r.model_id JOIN prompts p ON p.id = r.prompt_id"
        )).all()
    assert len(rows) == 4
    for prompt_format, template, rendered in rows:
        assert rendered == backend.render(template, prompt_format)
    summary = run_ingest(engine, request)
    assert (summary.units, summary.done, summary.already_done) == (4, 4, 0)
    assert statuses(engine) == {"done": 4}
