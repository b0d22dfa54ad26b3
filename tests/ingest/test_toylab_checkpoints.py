"""Toy lab checkpoints: ``train_family(..., checkpoints=K)`` saves K evenly spaced
checkpoints of SFT and of DPO in the Trainer layout, and ``register_family`` registers them
as the stages' steps.

What is checked holds by construction, not by what training learned: where the checkpoints
are, that each is a loadable model, that saving them changes no weight (training is
deterministic, so the final stages are bit-identical to those of the same settings without
checkpoints, and the last checkpoint is the stage's final model), and how they register.
A family too small to learn anything keeps this fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from catalog import registry
from catalog.db import session_scope
from catalog.errors import InvalidInput
from catalog.toylab import (
    MANIFEST,
    ToyFamilySettings,
    checkpoint_steps,
    make_task,
    register_family,
    train_family,
)

COIN = make_task("coin", ["heads", "tails"], [("plain", "Flip a coin."), ("terse", "Coin:")])
TINY = ToyFamilySettings(
    tasks=(COIN,), prompts_per_task=2, default_seed_position=1, hidden_size=16,
    intermediate_size=32, num_heads=2, base_steps=3, sft_steps=6, dpo_steps=4,
)
CHECKPOINTS = 3


def digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("toylab-checkpoints")
    return train_family(out_dir, TINY, checkpoints=CHECKPOINTS)


@pytest.mark.parametrize(
    ("steps", "count", "expected"),
    [(120, 8, (15, 30, 45, 60, 75, 90, 105, 120)), (12, 8, (1, 3, 4, 6, 7, 9, 10, 12)),
     (5, 5, (1, 2, 3, 4, 5)), (6, 1, (6,)), (7, 0, ())],
)
def test_checkpoint_steps_are_evenly_spaced_and_end_at_the_last_step(steps, count, expected):
    assert checkpoint_steps(steps, count) == expected


def test_sft_and_dpo_save_checkpoints_in_the_trainer_layout(family):
    assert family.settings.checkpoints == CHECKPOINTS
    assert [(s.name, s.checkpoints) for s in family.stages] == [
        ("base", ()), ("sft", (2, 4, 6)), ("dpo", (1, 2, 4))
    ]
    assert not list(family.stage("base").path.glob("checkpoint-*"))
    for stage in family.stages[1:]:
        folders = sorted(p.name for p in stage.path.glob("checkpoint-*"))
        assert folders == sorted(f"checkpoint-{step}" for step in stage.checkpoints)
        for step in stage.checkpoints:
            checkpoint = stage.checkpoint(step)
            assert checkpoint.path == stage.path / f"checkpoint-{step}"
            model = AutoModelForCausalLM.from_pretrained(checkpoint.path)
            tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
            assert model.config.vocab_size == len(tokenizer)
        # Each checkpoint is a later state of training; the last one is the stage's model.
        digests = [digest(stage.checkpoint(step).path) for step in stage.checkpoints]
        assert len(set(digests)) == len(digests)
        assert digests[-1] == digest(stage.path)
    with pytest.raises(InvalidInput, match=r"checkpoints at steps \[2, 4, 6\], not 3"):
        family.stage("sft").checkpoint(3)
    manifest = json.loads((family.root / MANIFEST).read_text())
    assert [s["checkpoints"] for s in manifest["stages"]] == [[], [2, 4, 6], [1, 2, 4]]


def test_saving_checkpoints_changes_no_weight_and_is_a_setting(family, tmp_path):
    plain = train_family(tmp_path, TINY)
    assert plain.root != family.root  # checkpoints are part of the settings hash
    assert [s.checkpoints for s in plain.stages] == [(), (), ()]
    for with_checkpoints, without in zip(family.stages, plain.stages):
        assert digest(with_checkpoints.path) == digest(without.path)
    again = train_family(family.root.parent, replace(TINY, checkpoints=CHECKPOINTS))
    assert again.reused and again.root == family.root


@pytest.mark.parametrize("count", [-1, 5])
def test_more_checkpoints_than_steps_is_a_named_error(tmp_path, count):
    with pytest.raises(InvalidInput, match="checkpoints must be between 0 and 4"):
        train_family(tmp_path, TINY, checkpoints=count)
    assert not list(tmp_path.glob("toy-*"))


def test_register_family_registers_the_checkpoints_as_steps(engine, family):
    with session_scope(engine) as session:
        register_family(session, family, "lab")
        register_family(session, family, "lab")  # again: nothing changes
    with session_scope(engine) as session:
        models = registry.family_models(session, "lab")
        assert [(m.name, m.stage, m.stage_order, m.step, m.prompt_format) for m in models] == [
            ("lab-base", "base", 0, None, "plain"),
            ("lab-sft-step2", "sft", 1, 2, "chat"),
            ("lab-sft-step4", "sft", 1, 4, "chat"),
            ("lab-sft-step6", "sft", 1, 6, "chat"),
            ("lab-dpo-step1", "dpo", 2, 1, "chat"),
            ("lab-dpo-step2", "dpo", 2, 2, "chat"),
            ("lab-dpo-step4", "dpo", 2, 4, "chat"),
        ]
        sft = family.stage("sft")
        assert [m.source for m in models[1:4]] == [
            str(sft.checkpoint(step).path.resolve()) for step in sft.checkpoints
        ]
        final = registry.stage_model(session, "lab", "sft")
        assert (final.step, final.source) == (6, str(sft.checkpoint(6).path.resolve()))
        assert all("toy lab stage" in m.notes for m in models)
