"""Checkpoints of a stage: discovery (catalog/checkpoints.py) and registration (registry).

Finding ``checkpoint-<step>/`` folders and parsing hub branch names run offline; listing a
hub repository's branches needs the hub (``hub_branches``), which these tests never reach.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from catalog import registry
from catalog.checkpoints import Checkpoint, checkpoint_dirs, ref_checkpoints, ref_step
from catalog.db import session_scope
from catalog.errors import InvalidInput, NotFound
from catalog.schema import Model
from ingest.backends import check_backend_options

# Branch names as OLMo 2 and Pythia publish them (plus main and a non-checkpoint branch).
OLMO_REFS = [
    "main",
    "stage1-step1000-tokens5B",
    "stage1-step200-tokens1B",
    "stage1-step10000-tokens42B",
    "stage2-ingredient1-step500-tokens3B",
    "stage2-ingredient2-step500-tokens3B",
    "stage2-ingredient1-step1000-tokens5B",
]


def make_run(tmp_path, names, files=()):
    run = tmp_path / "run"
    for name in names:
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    for name in files:
        (run / name).write_text("not a folder")
    return run


# ---------------------------------------------------------------------------- discovery


def test_checkpoint_folders_are_found_in_step_order(tmp_path):
    run = make_run(
        tmp_path,
        ["checkpoint-1000", "checkpoint-20", "checkpoint-300", "runs", "checkpoint-x", "final"],
        files=["checkpoint-5", "trainer_state.json"],
    )
    found = checkpoint_dirs(run)
    assert [c.step for c in found] == [20, 300, 1000]  # by number, not by name
    assert [c.source for c in found] == [
        str((run / f"checkpoint-{step}").resolve()) for step in (20, 300, 1000)
    ]
    assert all(c.revision is None for c in found)


def test_checkpoint_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(NotFound, match="is not a directory"):
        checkpoint_dirs(tmp_path / "nope")
    with pytest.raises(NotFound, match=r"no checkpoint-<step>/ folders"):
        checkpoint_dirs(make_run(tmp_path, ["final"], files=["checkpoint-5"]))


def test_two_folders_with_one_step_are_refused(tmp_path):
    run = make_run(tmp_path, ["checkpoint-10", "checkpoint-010"])
    with pytest.raises(InvalidInput, match="are both step 10; each checkpoint .* its own step"):
        checkpoint_dirs(run)


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("stage1-step1000-tokens5B", 1000),
        ("stage2-ingredient3-step11931-tokens50B", 11931),
        ("step143000", 143000),  # Pythia
        ("step1000-tokens4B", 1000),  # OLMo 1
        ("run_step_250", 250),
        ("main", None),
        ("stage1", None),
        ("tokens5B", None),
        ("ministep5", None),  # "step" inside a word is not the step
    ],
)
def test_ref_names_give_their_step(name, step):
    assert ref_step(name) == step


def test_a_step_group_in_the_regex_takes_the_step_from_it():
    tokens = re.compile(r"tokens(?P<step>\d+)B")
    assert ref_step("stage1-step1000-tokens5B", tokens) == 5
    assert ref_step("main", tokens) is None
    assert ref_step("stage1-step1000-tokens5B", re.compile("stage1")) == 1000


def test_matching_branches_become_checkpoints_in_step_order():
    found = ref_checkpoints("allenai/OLMo-2-1124-7B", OLMO_REFS, r"^stage1-")
    assert found == [
        Checkpoint(200, "allenai/OLMo-2-1124-7B", "stage1-step200-tokens1B"),
        Checkpoint(1000, "allenai/OLMo-2-1124-7B", "stage1-step1000-tokens5B"),
        Checkpoint(10000, "allenai/OLMo-2-1124-7B", "stage1-step10000-tokens42B"),
    ]
    tokens = ref_checkpoints("org/m", OLMO_REFS, r"^stage1-.*tokens(?P<step>\d+)B")
    assert [c.step for c in tokens] == [1, 5, 42]


def test_branch_selection_errors_say_what_to_do():
    with pytest.raises(InvalidInput, match="not a regular expression"):
        ref_checkpoints("org/m", OLMO_REFS, "stage1-(")
    no_match = r"no branch of org/m matches --revisions '\^stage9'.*7 branches: main"
    with pytest.raises(NotFound, match=no_match):
        ref_checkpoints("org/m", OLMO_REFS, "^stage9")
    with pytest.raises(InvalidInput, match="branch 'main' of org/m matches .* names no step"):
        ref_checkpoints("org/m", OLMO_REFS, "^main$")
    # Two data-mix ingredients at one step: the regex must pick one of them.
    with pytest.raises(
        InvalidInput,
        match="stage2-ingredient1-step500-tokens3B and stage2-ingredient2-step500-tokens3B "
        "are both step 500",
    ):
        ref_checkpoints("org/m", OLMO_REFS, "^stage2-")
    one_ingredient = ref_checkpoints("org/m", OLMO_REFS, "^stage2-ingredient1-")
    assert [c.step for c in one_ingredient] == [500, 1000]


# ---------------------------------------------------------------------------- registry


def add(session, name, stage="sft", step=None, **fields):
    return registry.add_model(
        session, name=name, family="fam", stage=stage, step=step, source=f"org/{name}", **fields
    )


def stored_models(engine) -> list[tuple]:
    with session_scope(engine) as session:
        return [
            (m.name, m.stage, m.stage_order, m.step, m.source, m.revision)
            for m in session.scalars(select(Model).order_by(Model.id))
        ]


def test_checkpoints_of_a_stage_in_step_order_the_final_one_last(engine):
    with session_scope(engine) as session:
        add(session, "dpo", stage="dpo")
        add(session, "sft-final")  # the released SFT model: no step
        add(session, "sft-2000", step=2000)
        add(session, "base", stage="base")
        add(session, "sft-500", step=500)
        add(session, "sft-0", step=0)
        names = [m.name for m in registry.family_models(session, "fam")]
        assert names == ["base", "sft-0", "sft-500", "sft-2000", "sft-final", "dpo"]
        assert [m.name for m in registry.list_models(session, family="fam")] == names
        assert registry.stage_model(session, "fam", "sft").name == "sft-final"
        assert registry.stage_model(session, "fam", "SFT", step=500).name == "sft-500"
        missing = "no 'sft' model at step 7; run `catalog models list --family fam`"
        with pytest.raises(NotFound, match=missing):
            registry.stage_model(session, "fam", "sft", step=7)
        with pytest.raises(NotFound, match="no 'rl' model"):
            registry.stage_model(session, "fam", "rl")


def test_without_a_stepless_model_the_highest_step_is_final(engine):
    with session_scope(engine) as session:
        for step in (300, 100, 200):
            add(session, f"sft-{step}", step=step)
        assert registry.stage_model(session, "fam", "sft").step == 300


def test_a_duplicate_step_is_refused_and_the_store_kept(engine):
    with session_scope(engine) as session:
        add(session, "sft-500", step=500)
        add(session, "sft")
    before = stored_models(engine)
    for fields, message in [
        ({"name": "again-500", "step": 500},
         "family 'fam' already has step 500 of stage 'sft' \\(model 'sft-500'\\); each "
         "checkpoint of a stage needs its own step"),
        ({"name": "again", "step": None},
         "already has a 'sft' stage without a step \\(model 'sft'\\); register another "
         "checkpoint of it with its own --step"),
        ({"name": "other-order", "step": 900, "stage_order": 2},
         "stage 'sft' of family 'fam' has stage order 1 \\(model 'sft-500'\\), not 2"),
        ({"name": "negative", "step": -1}, "step must be >= 0"),
        # the same name at another step is another model, not a re-registration
        ({"name": "sft-500", "step": 600}, "already registered with step 500 \\(not 600\\)"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            with session_scope(engine) as session:
                add(session, **fields)
    assert stored_models(engine) == before
    with session_scope(engine) as session:  # an identical model again changes nothing
        assert add(session, "sft-500", step=500).name == "sft-500"
    assert stored_models(engine) == before


def test_a_checkpoint_takes_its_stages_spelling(engine):
    with session_scope(engine) as session:
        add(session, "sft")
        assert add(session, "sft-100", stage="SFT", step=100).stage == "sft"
        assert [m.stage for m in registry.family_models(session, "fam")] == ["sft", "sft"]


def test_add_checkpoints_registers_every_folder_of_a_run(engine, tmp_path):
    run = make_run(tmp_path, ["checkpoint-40", "checkpoint-120", "checkpoint-80"])
    with session_scope(engine) as session:
        models = registry.add_checkpoints(
            session, family="fam", stage="sft", source=str(run), prompt_format="chat", notes="run 1"
        )
        assert [(m.name, m.step, m.stage_order) for m in models] == [
            ("fam-sft-step40", 40, 1), ("fam-sft-step80", 80, 1), ("fam-sft-step120", 120, 1)
        ]
        assert models[0].source == str((run / "checkpoint-40").resolve())
        assert {m.notes for m in models} == {"run 1"}
    before = stored_models(engine)
    with session_scope(engine) as session:  # again: nothing changes
        registry.add_checkpoints(
            session, family="fam", stage="sft", source=str(run), prompt_format="chat", notes="run 1"
        )
    assert stored_models(engine) == before
    with pytest.raises(InvalidInput, match="is a local directory.*drop --revisions"):
        with session_scope(engine) as session:
            registry.add_checkpoints(
                session, family="fam", stage="sft", source=str(run), revisions="step"
            )
    # One new folder whose step is already a model of the stage under another name: refused,
    # and none of the run's other checkpoints is registered either.
    (run / "checkpoint-200").mkdir()
    with session_scope(engine) as session:
        add(session, "hand-made-200", step=200)
    before = stored_models(engine)
    (run / "checkpoint-160").mkdir()
    with pytest.raises(InvalidInput, match="already has step 200 of stage 'sft'"):
        with session_scope(engine) as session:
            registry.add_checkpoints(
                session, family="fam", stage="sft", source=str(run), prompt_format="chat",
                notes="run 1",
            )
    assert stored_models(engine) == before


def test_experiment_files_register_checkpoints_as_one_stage(engine, tmp_path):
    path = tmp_path / "ckpt.toml"
    path.write_text(
        """
[[families]]
name = "fam"
[[families.stages]]
stage = "base"
source = "org/base"
[[families.stages]]
stage = "sft"
name = "sft-100"
source = "org/sft"
revision = "step100"
step = 100
[[families.stages]]
stage = "sft"
name = "sft-200"
source = "org/sft"
revision = "step200"
step = 200
[[families.stages]]
stage = "dpo"
source = "org/dpo"
""",
        encoding="utf-8",
    )
    with session_scope(engine) as session:
        registry.load_experiment(session, path, check_backend=check_backend_options)
        rows = [
            (m.name, m.stage_order, m.step, m.revision)
            for m in registry.family_models(session, "fam")
        ]
    assert rows == [
        ("org/base", 0, None, None),
        ("sft-100", 1, 100, "step100"),
        ("sft-200", 1, 200, "step200"),
        ("org/dpo", 2, None, None),  # the third distinct stage, though the fourth entry
    ]
    duplicate = path.read_text().replace('"sft-200"', '"sft-100-again"')
    duplicate = duplicate.replace("step = 200", "step = 100")
    path.write_text(duplicate, encoding="utf-8")
    before = stored_models(engine)
    with pytest.raises(InvalidInput, match=r"families\[0\]\.stages\[2\]: .*already has step 100"):
        with session_scope(engine) as session:
            registry.load_experiment(session, path, check_backend=check_backend_options)
    assert stored_models(engine) == before
