"""Families, models, experiments, tasks and prompts in the database (catalog/registry.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from catalog import registry
from catalog.db import session_scope
from catalog.errors import InvalidInput, NotFound
from catalog.normalize import get_normalizer
from catalog.prompting import text_hash
from catalog.schema import Family, Model, Prompt, Task
from catalog.tasks import PromptSpec, TaskSpec, bundled_task
from ingest.backends import check_backend_options

PINNED = "0123456789abcdef0123456789abcdef01234567"


def _count(session, table) -> int:
    return session.scalar(select(func.count()).select_from(table))


@pytest.mark.parametrize(
    ("stage", "order"),
    [("base", 0), ("SFT", 1), ("dpo", 2), ("rl", 3), ("RLVR", 3), ("Instruct", 3)],
)
def test_default_stage_orders_ignore_case(stage, order):
    assert registry.stage_order_for(stage, None) == order


def test_unknown_stage_needs_an_order(engine):
    with session_scope(engine) as session:
        with pytest.raises(InvalidInput, match="unknown stage name 'ppo'.*--stage-order"):
            registry.add_model(session, name="m", family="f", stage="ppo")
        model = registry.add_model(session, name="m", family="f", stage="ppo", stage_order=4)
        assert model.stage_order == 4


def test_trust_remote_code_needs_a_pinned_revision(engine):
    with session_scope(engine) as session:
        for revision in (None, "main", PINNED[:-1]):
            with pytest.raises(InvalidInput, match="40-character commit"):
                registry.add_model(
                    session, name="m", family="f", stage="base", revision=revision,
                    trust_remote_code=True,
                )
        model = registry.add_model(
            session, name="m", family="f", stage="base", revision=PINNED, trust_remote_code=True
        )
        assert model.trust_remote_code is True


def test_readding_a_model_is_a_no_op_and_a_conflict_is_an_error(engine):
    fields = dict(name="m-sft", family="fam", stage="sft", source="org/m-sft", prompt_format="chat")
    with session_scope(engine) as session:
        first = registry.add_model(session, **fields)
        again = registry.add_model(session, **fields)
        assert again.id == first.id
        assert _count(session, Model) == 1
        with pytest.raises(InvalidInput, match="already registered with source 'org/m-sft'"):
            registry.add_model(session, **{**fields, "source": "org/other"})
        with pytest.raises(InvalidInput, match="family 'fam' \\(not 'other'\\)"):
            registry.add_model(session, **{**fields, "family": "other"})
        with pytest.raises(InvalidInput, match="already has a 'sft' stage"):
            registry.add_model(session, **{**fields, "name": "m-sft-2"})
        # Stage names are case-insensitive.
        assert registry.add_model(session, **{**fields, "stage": "SFT"}).id == first.id
        with pytest.raises(InvalidInput, match="already has a 'sft' stage without a step"):
            registry.add_model(session, **{**fields, "name": "m-sft-3", "stage": "Sft"})
        with pytest.raises(InvalidInput, match="prompt format"):
            registry.add_model(session, **{**fields, "name": "x", "prompt_format": "json"})


def test_get_model_and_family_models_in_stage_order(engine):
    with session_scope(engine) as session:
        for name, stage in (("m-dpo", "dpo"), ("m-base", "base"), ("m-sft", "sft")):
            registry.add_model(session, name=name, family="fam", stage=stage)
        registry.add_model(session, name="x-base", family="another", stage="base")
        assert registry.get_model(session, "m-sft").stage == "sft"
        assert [m.name for m in registry.family_models(session, "fam")] == [
            "m-base", "m-sft", "m-dpo"
        ]
        assert [m.name for m in registry.list_models(session)] == [
            "x-base", "m-base", "m-sft", "m-dpo"
        ]
        assert [m.name for m in registry.list_models(session, family="another")] == ["x-base"]
        with pytest.raises(NotFound, match="catalog models list"):
            registry.get_model(session, "nope")
        with pytest.raises(NotFound, match="no family named 'nope'"):
            registry.family_models(session, "nope")


def test_ensure_family_fills_in_a_missing_description(engine):
    with session_scope(engine) as session:
        family = registry.ensure_family(session, "fam")
        assert registry.ensure_family(session, "fam", "the pipeline").id == family.id
        assert family.description == "the pipeline"
        assert registry.ensure_family(session, "fam", "something else").description == "the pipeline"


def test_shipped_study_registers_both_families_in_order(engine):
    with session_scope(engine) as session:
        models = registry.load_experiment(session, "study", check_backend=check_backend_options)
        assert len(models) == 8
        # loading again changes nothing
        registry.load_experiment(session, "study", check_backend=check_backend_options)
        assert _count(session, Model) == 8 and _count(session, Family) == 2
        tulu = registry.family_models(session, "tulu-3-8b")
        assert [(m.stage, m.stage_order, m.source, m.prompt_format) for m in tulu] == [
            ("base", 0, "meta-llama/Llama-3.1-8B", "plain"),
            ("sft", 1, "allenai/Llama-3.1-Tulu-3-8B-SFT", "chat"),
            ("dpo", 2, "allenai/Llama-3.1-Tulu-3-8B-DPO", "chat"),
            ("rlvr", 3, "allenai/Llama-3.1-Tulu-3-8B", "chat"),
        ]
        olmo = registry.family_models(session, "olmo-2-1124-7b")
        assert [m.name for m in olmo] == [
            "allenai/OLMo-2-1124-7B",
            "allenai/OLMo-2-1124-7B-SFT",
            "allenai/OLMo-2-1124-7B-DPO",
            "allenai/OLMo-2-1124-7B-Instruct",
        ]
        assert olmo[0].family.description.startswith("OLMo 2 1124 7B")


def test_experiment_file_errors_name_the_file_and_field(engine, tmp_path):
    path = tmp_path / "exp.toml"
    cases = {
        '[[families]]\nname = "f"\n[[families.stages]]\nstage = "base"\nsrc = "x"\n': (
            r"families\[0\]\.stages\[0\]: unknown field\(s\) src"
        ),
        'title = "no families"\n': "no \\[\\[families\\]\\]",
        '[[families]]\nname = "f"\n[[families.stages]]\nstage = "ppo"\nsource = "x"\n'
        'stage_order = -1\n': "must be >= 0",
        "[[families]\n": "cannot read the experiment file",
    }
    with session_scope(engine) as session:
        for text, message in cases.items():
            path.write_text(text)
            with pytest.raises(InvalidInput, match=message) as info:
                registry.load_experiment(session, path, check_backend=check_backend_options)
            assert str(path) in str(info.value)
        with pytest.raises(NotFound, match="shipped: study"):
            registry.load_experiment(session, tmp_path / "missing.toml",
                                     check_backend=check_backend_options)


def _spec(keys: list[str], texts: dict[str, str] | None = None) -> TaskSpec:
    texts = texts or {}
    return TaskSpec(
        name="pick",
        kind="closed",
        normalizer="choice",
        options=("a", "b"),
        description="pick a or b",
        prompts=tuple(PromptSpec(k, texts.get(k, f"Pick a or b ({k}).")) for k in keys),
    )


def test_sync_task_keeps_positions_and_appends_new_keys(engine):
    with session_scope(engine) as session:
        task = registry.sync_task(session, _spec(["p1", "p2", "p3"]))
        assert task.kind == "closed" and task.options == ["a", "b"]
        assert task.normalizer_version == get_normalizer("choice").version
        assert task.spec["prompts"][0] == {"key": "p1", "text": "Pick a or b (p1)."}
        again = registry.sync_task(
            session, _spec(["p9", "p3", "p1"], {"p1": "Choose a or b."})
        )
        assert again.id == task.id and _count(session, Task) == 1
        prompts = {p.key: p for p in session.scalars(select(Prompt))}
        assert {k: p.position for k, p in prompts.items()} == {"p1": 0, "p2": 1, "p3": 2, "p9": 3}
        assert prompts["p1"].template == "Choose a or b."
        assert prompts["p1"].text_hash == text_hash("Choose a or b.")


def test_task_by_name_syncs_a_bundled_task_on_first_use(engine):
    with session_scope(engine) as session:
        task = registry.task_by_name(session, "digit")
        spec = bundled_task("digit")
        assert task.options == list(spec.options)
        assert [p.key for p in task.prompts] == [p.key for p in spec.prompts]
        assert registry.task_by_name(session, "digit").id == task.id
        with pytest.raises(NotFound, match="catalog tasks list"):
            registry.task_by_name(session, "no_such_task")


def test_open_tasks_and_prompts_for_imports(engine):
    with session_scope(engine) as session:
        task = registry.ensure_open_task(session, "favourite_tree")
        assert (task.kind, task.normalizer, task.options) == ("open", "open_word", [])
        assert registry.ensure_open_task(session, "favourite_tree").id == task.id
        first = registry.ensure_prompt(session, task, "q1")
        second = registry.ensure_prompt(session, task, "q2", "Name a tree.")
        assert (first.position, first.template) == (0, None)
        assert (second.position, second.text_hash) == (1, text_hash("Name a tree."))
        assert registry.ensure_prompt(session, task, "q1", "Any tree?").template == "Any tree?"
        with pytest.raises(InvalidInput, match="different text"):
            registry.ensure_prompt(session, task, "q2", "Name a bush.")
