"""The toy family trainer: real tiny models trained on the CPU, saved, reloaded and measured.

The phase tests compute each stage's next-token distribution over the option tokens exactly
from the model's logits (nothing is sampled), so their thresholds are not statistical. They
are properties of the trainer, not of one training run: training fits soft targets (the
expected loss, no sampled answers), and over training seeds 0-9 (world seed 0) and world
seeds 1-2 the margins were wide: base error <= 0.021 (bound 0.05), base liquidity >= 0.27
(0.1), SFT error <= 0.019 (0.05), SFT-to-seed / SFT-to-base MSE ratio <= 1e-4 (0.05), the
planted seed always the closest base prompt, DPO mass on the seed support >= 0.96 (0.8).
How far DPO moves, though, is an outcome of training (total variation 0.004 to 0.37 across
those seeds), so the DPO test checks the direction, not a distance: DPO's own objective went
down from its value at the reference (log 2), and the preferred options gained mass (by
+0.004 to +0.37). Tests that sample check the counts against the model's own exact
probabilities at ``SIGNIFICANCE`` (fixed seeds).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from stat_checks import goodness_of_fit
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from catalog.db import session_scope
from catalog.errors import InvalidInput
from catalog.normalize import normalize
from catalog.prompting import render
from catalog.registry import family_models
from catalog.toylab import (
    ANSWER_PREFIX,
    MANIFEST,
    ToyFamilySettings,
    build_tokenizer,
    dpo_loss,
    learned_distributions,
    make_task,
    plant,
    register_family,
    seed_support,
    train_family,
)
from catalog.toylab.small import COIN, DIGIT
from catalog.toylab.small import SMALL_FAMILY as SETTINGS
from catalog.toylab.small import SMALL_TASKS as TASKS
from catalog.toylab.training import _PreferenceData
from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.exact import (
    continuation_ids,
    default_surface_forms,
    option_probabilities,
    sequence_logprobs,
)
from ingest.sampling import encode_prompt

# Sampled counts vs the model's exact probabilities (fixed sampling seeds): each test
# rejects at the 1% level overall, Bonferroni-divided over its checks.
SIGNIFICANCE = 0.01
# A family too small to learn anything, for properties that don't need learning.
TINY = ToyFamilySettings(
    tasks=(COIN, DIGIT),
    prompts_per_task=2,
    default_seed_position=1,
    hidden_size=16,
    intermediate_size=32,
    num_heads=2,
    base_steps=3,
    sft_steps=3,
    dpo_steps=3,
)


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    return entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2


def mse(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean((p - q) ** 2))


def weights_digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return train_family(tmp_path_factory.mktemp("toylab"), SETTINGS)


@pytest.fixture(scope="module")
def learned(family):
    tasks = SETTINGS.resolved_tasks()
    return {stage.name: learned_distributions(stage, tasks) for stage in family.stages}


def test_stages_load_from_disk_with_auto_classes(family):
    assert [(s.name, s.order, s.prompt_format) for s in family.stages] == [
        ("base", 0, "plain"),
        ("sft", 1, "chat"),
        ("dpo", 2, "chat"),
    ]
    for stage in family.stages:
        model = AutoModelForCausalLM.from_pretrained(stage.path)
        tokenizer = AutoTokenizer.from_pretrained(stage.path)
        assert isinstance(model, LlamaForCausalLM)
        assert (stage.path / "model.safetensors").is_file()
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id
        assert model.config.vocab_size == len(tokenizer)


def test_chat_template_renders_one_user_turn(family):
    tokenizer = AutoTokenizer.from_pretrained(family.stage("sft").path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Flip a coin."}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|> Flip a coin. <|assistant|>"
    # No token is added behind the caller's back: both tokenization paths agree.
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Flip a coin."}], tokenize=True, add_generation_prompt=True
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tokenizer(text)["input_ids"]


@pytest.mark.parametrize("stage_name", ["base", "sft", "dpo"])
def test_greedy_answers_decode_to_bare_options(family, stage_name):
    stage = family.stage(stage_name)
    model = AutoModelForCausalLM.from_pretrained(stage.path)
    tokenizer = AutoTokenizer.from_pretrained(stage.path)
    for task in TASKS:
        prompt = render(tokenizer, task.prompts[0].text, stage.prompt_format)
        inputs = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
        assert new_tokens[-1] == tokenizer.eos_token_id  # the answer ends the sequence
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        assert text.removeprefix(ANSWER_PREFIX[stage.prompt_format]) in task.options
        assert normalize(task, text) == text.strip()


def test_tokenizer_round_trips_every_training_text(family):
    tokenizer = AutoTokenizer.from_pretrained(family.stage("base").path)
    for task in TASKS:
        for prompt in task.prompts:
            for prompt_format, prefix in ANSWER_PREFIX.items():
                text = render(tokenizer, prompt.text, prompt_format) + prefix + task.options[-1]
                ids = tokenizer(text)["input_ids"]
                assert tokenizer.unk_token_id not in ids
                assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("stage_name", ["base", "dpo"])
def test_catalog_backend_samples_and_scores_the_toy_models(family, learned, stage_name):
    """The ingest layer's own sampler and exact mode read what the toy lab's models say.

    How much mass a trained toy model leaves off its options (another task's answer, as
    real models do) is whatever training gave, so nothing here assumes it: the samples are
    checked against the model's exact probabilities of each surface form."""
    stage = family.stage(stage_name)
    spec = ModelSpec(str(stage.path), prompt_format=stage.prompt_format)
    n = 300
    level = SIGNIFICANCE / (2 * len(TASKS))  # two checks per task
    with load_backend(spec, device="cpu") as backend:
        model, tokenizer, eos = (
            backend.loaded.model, backend.loaded.tokenizer, backend.loaded.eos_token_ids
        )
        for task in TASKS:
            prompt = task.prompts[1]
            rendered = backend.render(prompt.text, stage.prompt_format)
            # Exact mode's scoring gives the toy lab's own measurement: P(option token) after
            # the prompt, renormalized (two implementations of one number: float tolerance).
            prompt_ids = encode_prompt(tokenizer, rendered)
            prefix = ANSWER_PREFIX[stage.prompt_format]
            answers = [
                continuation_ids(tokenizer, rendered, prompt_ids, prefix + option)
                for option in task.options
            ]
            with torch.inference_mode():
                logprobs = sequence_logprobs(model, prompt_ids, [(a, False) for a in answers], eos)
            np.testing.assert_allclose(
                torch.softmax(logprobs, dim=0).numpy(),
                learned[stage_name][task.name][prompt.key],
                atol=1e-5,
                err_msg=task.name,
            )
            # P(the answer is exactly this surface form, then EOS), one form at a time.
            forms = default_surface_forms(task.options, task.aliases, stage.prompt_format)
            for option, option_forms in forms.items():
                assert all(normalize(task, form) == option for form in option_forms)
            exact = option_probabilities(
                model, tokenizer, rendered, {f: [f] for fs in forms.values() for f in fs},
                eos_token_ids=eos,
            )
            raw = {form: p * exact.covered_mass for form, p in exact.probabilities.items()}
            counts = backend.sample(rendered, SamplingParams(n=n, max_new_tokens=4), seed=0)
            assert sum(counts.values()) == n
            pvalue, _ = goodness_of_fit(counts, raw, n)
            assert pvalue > level, (task.name, pvalue, raw, counts)
            # Every form normalizes to its option, so P(invalid) <= 1 - covered mass: more
            # invalid samples than that allows would mean a sampler that leaks.
            invalid = {text: c for text, c in counts.items() if normalize(task, text) is None}
            bound = 1.0 - exact.covered_mass
            excess = binomtest(sum(invalid.values()), n, bound, alternative="greater").pvalue
            assert excess > level, (task.name, bound, invalid)


def test_base_is_liquid_and_learns_the_planted_distributions(family, learned):
    for task in TASKS:
        base = learned["base"][task.name]
        planted = family.planted[task.name]
        liquidity = np.mean([jsd(base[a], base[b]) for a, b in itertools.combinations(base, 2)])
        assert liquidity > 0.1, task.name
        for key, dist in base.items():
            assert np.abs(dist - np.array(planted.base[key])).max() < 0.05, (task.name, key)


def test_sft_nucleates_onto_the_planted_seed(family, learned):
    for task in TASKS:
        planted = family.planted[task.name]
        seed = np.array(planted.seed)
        sft = learned["sft"][task.name]
        sft_mean = np.mean(list(sft.values()), axis=0)
        base_mean = np.mean(list(learned["base"][task.name].values()), axis=0)
        assert mse(sft_mean, seed) < 0.05 * mse(sft_mean, base_mean), task.name
        for dist in sft.values():  # every prompt, not just the average
            assert np.abs(dist - seed).max() < 0.05, task.name
        # The seed analysis would find it: the closest base prompt to SFT is the planted one.
        base = learned["base"][task.name]
        assert min(base, key=lambda key: mse(base[key], sft_mean)) == planted.seed_key


def test_dpo_settles_inside_the_seed_support(family, learned):
    for task in TASKS:
        planted = family.planted[task.name]
        support = [task.options.index(o) for o in planted.support]
        preferred = [task.options.index(o) for o in planted.preferred]
        sft = np.mean(list(learned["sft"][task.name].values()), axis=0)
        dpo = np.mean(list(learned["dpo"][task.name].values()), axis=0)
        assert dpo[support].sum() >= 0.8, task.name
        assert dpo[preferred].sum() > sft[preferred].sum(), task.name  # towards the preferred
    # It moved: DPO lowered its own objective on its preference pairs, which is log 2 at the
    # SFT model (the frozen reference) by construction.
    tokenizer = AutoTokenizer.from_pretrained(family.stage("sft").path)
    pairs = _PreferenceData(tokenizer, SETTINGS.resolved_tasks(), family.planted)
    logprobs = {}
    for name in ("sft", "dpo"):
        model = AutoModelForCausalLM.from_pretrained(family.stage(name).path).eval()
        with torch.no_grad():
            logprobs[name] = pairs.sequence_logprobs(model)
    reference = logprobs["sft"]

    def objective(policy) -> float:
        return dpo_loss(
            policy[pairs.chosen], policy[pairs.rejected],
            reference[pairs.chosen], reference[pairs.rejected], SETTINGS.dpo_beta,
        ).mean().item()

    assert objective(reference) == pytest.approx(math.log(2))
    assert objective(logprobs["dpo"]) < objective(reference)


def test_manifest_holds_the_planted_ground_truth(family):
    manifest = json.loads((family.root / MANIFEST).read_text())
    assert manifest["settings_hash"] == SETTINGS.settings_hash() == family.settings_hash
    assert family.root.name == f"toy-{family.settings_hash[:12]}"
    assert {name: p["seed_prompt"] for name, p in manifest["planted"].items()} == {
        "digit": "rng",
        "coin": "terse",
        "color": "paint",  # default_seed_position 2
    }
    assert manifest["planted"]["coin"] == family.planted["coin"].to_dict()
    assert set(manifest["train_seconds"]) == {"base", "sft", "dpo"}


def test_register_family_adds_its_stages_as_an_ordinary_family(engine, family):
    with session_scope(engine) as session:
        register_family(session, family)
        register_family(session, family)  # again: nothing changes
    with session_scope(engine) as session:
        models = family_models(session, family.name)
        assert [(m.name, m.stage, m.stage_order, m.prompt_format, m.source) for m in models] == [
            (f"{family.name}-{s.name}", s.name, s.order, s.prompt_format, str(s.path))
            for s in family.stages
        ]
        assert "coin=terse" in models[0].notes
    with session_scope(engine) as session, pytest.raises(InvalidInput, match="already registered"):
        other = replace(family, stages=tuple(replace(s, path=s.path / "x") for s in family.stages))
        register_family(session, other)


def test_same_settings_give_identical_weights(tmp_path):
    first = train_family(tmp_path / "a", TINY)
    second = train_family(tmp_path / "b", TINY)
    assert not second.reused
    for a, b in zip(first.stages, second.stages):
        assert weights_digest(a.path) == weights_digest(b.path)
    reseeded = train_family(tmp_path / "a", replace(TINY, seed=1))
    assert reseeded.root != first.root
    assert weights_digest(reseeded.stage("base").path) != weights_digest(first.stage("base").path)
    assert reseeded.planted == first.planted  # same world, other weights


def test_cached_family_is_reused_not_retrained(tmp_path):
    first = train_family(tmp_path, TINY)
    weights = first.stage("dpo").path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = train_family(tmp_path, TINY)
    assert again.reused and not first.reused
    assert again.root == first.root
    assert weights.stat().st_mtime_ns == before
    assert again.planted == first.planted
    assert train_family(tmp_path, replace(TINY, dpo_steps=4)).root != first.root


def test_planting_is_diverse_and_keeps_the_seed_broad():
    planted = plant(SETTINGS)
    for task in TASKS:
        truth = planted[task.name]
        dists = [np.array(d) for d in truth.base.values()]
        for dist in dists:
            assert dist.sum() == pytest.approx(1.0) and (dist > 0).all()
        # Four prompts, at least two options: every prompt peaks somewhere else or higher.
        assert len({tuple(np.round(d, 6)) for d in dists}) == len(dists)
        assert min(mse(a, b) for a, b in itertools.combinations(dists, 2)) > 1e-3
        assert len(truth.support) >= 2
        assert set(truth.preferred) < set(truth.support) or len(truth.support) == 1
        assert truth.support == seed_support(task.options, truth.seed)
    assert plant(replace(SETTINGS, seed=7)) == planted  # weights seed: same world
    assert plant(replace(SETTINGS, world_seed=7)) != planted


def test_a_sharp_seed_is_broadened_so_dpo_can_move_inside_its_support():
    # With these settings both planted coin prompts are sharper than tau = 0.9 (found by
    # search), so no broad distribution can be swapped in and the seed is flattened.
    settings = ToyFamilySettings(
        tasks=(COIN,), prompts_per_task=2, default_seed_position=0, world_seed=116
    )
    truth = plant(settings)["coin"]
    assert max(truth.base["terse"]) > 0.9
    assert max(truth.seed) == pytest.approx(0.8)
    assert truth.support == ("heads", "tails") and len(truth.preferred) == 1


def test_default_family_uses_the_bundled_tasks_and_plants_liquid_bases():
    settings = ToyFamilySettings()
    tasks = settings.resolved_tasks()
    assert [t.name for t in tasks] == ["digit", "coin", "color"]
    assert all(len(t.prompts) == 12 for t in tasks)
    tokenizer = build_tokenizer(tasks)
    for task in tasks:
        for prompt in task.prompts:
            for prompt_format, prefix in ANSWER_PREFIX.items():
                text = render(tokenizer, prompt.text, prompt_format) + prefix + task.options[0]
                assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
        truth = plant(settings)[task.name]
        assert truth.seed_key == task.prompts[2].key
        dists = [np.array(d) for d in truth.base.values()]
        assert np.mean([jsd(a, b) for a, b in itertools.combinations(dists, 2)]) > 0.15


def test_seed_support_follows_the_metrics_contract():
    # The worked example of the metrics contract: 0.8 + 0.1 reaches tau = 0.9.
    assert seed_support(["a", "b", "c"], [0.8, 0.1, 0.1]) == ("a", "b")
    # Ties are taken in option text order.
    assert seed_support(["b", "a", "c"], [0.45, 0.45, 0.1], tau=0.4) == ("a",)


def test_importing_the_toy_lab_does_not_import_torch():
    code = "import sys, catalog.toylab; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == "[]"


def test_dpo_loss_values():
    zero = torch.tensor([0.0])
    assert dpo_loss(zero, zero, zero, zero, beta=0.5).item() == pytest.approx(np.log(2))
    # The policy prefers the chosen answer more than the reference does: low loss.
    low = dpo_loss(torch.tensor([-1.0]), torch.tensor([-9.0]), zero - 2, zero - 2, beta=1.0)
    high = dpo_loss(torch.tensor([-9.0]), torch.tensor([-1.0]), zero - 2, zero - 2, beta=1.0)
    assert low.item() < 0.01
    assert high.item() > 7.9


STATE = make_task("state", ["New York", "Ohio"], [("plain", "Name a state."), ("terse", "State:")])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (replace(SETTINGS, seed_prompts={"coin": "nope"}), "planted seed prompt 'nope'"),
        (replace(SETTINGS, seed_prompts={"dice": "plain"}), "not in the toy family: dice"),
        (replace(SETTINGS, default_seed_position=9), "default_seed_position 9"),
        (replace(SETTINGS, prompts_per_task=1), "at least 2 prompts"),
        (ToyFamilySettings(tasks=(STATE,), default_seed_position=0), "'New York' is not one word"),
        (ToyFamilySettings(tasks=(replace(COIN, kind="open", options=()),)), "must be closed"),
    ],
)
def test_invalid_settings_are_named_errors(tmp_path, settings, message):
    with pytest.raises(InvalidInput, match=message):
        train_family(tmp_path, settings)
    assert not list(tmp_path.glob("toy-*/manifest.json"))
