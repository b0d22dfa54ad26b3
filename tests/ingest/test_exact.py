"""Exact mode: batched cached scoring equals brute-force scoring, and agrees with sampling."""

from __future__ import annotations

import math

import pytest
import torch
from stat_checks import goodness_of_fit
from tiny_models import cached_tiny_model

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.exact import continuation_ids, default_surface_forms, option_probabilities
from ingest.sampling import encode_prompt

DIGITS = [str(d) for d in range(10)]
# Chi-square goodness of fit of sampled counts against the model's own exact probabilities
# (fixed seed): reject at the 1% level. Nothing here assumes what training taught the tiny
# model; every expectation is computed from the trained model itself.
SIGNIFICANCE = 0.01


@pytest.fixture(scope="module")
def chat_backend(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    return load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu")


@pytest.fixture(scope="module")
def plain_backend(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    return load_backend(ModelSpec(str(path), prompt_format="plain"), device="cpu")


def brute_force(model, tokenizer, rendered, text, eos_ids, needs_eos) -> float:
    """Probability of ``text`` (then EOS if asked) from one uncached pass over the full sequence."""
    prompt = encode_prompt(tokenizer, rendered)
    continuation = continuation_ids(tokenizer, rendered, prompt, text)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + continuation])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total = sum(logp[len(prompt) - 1 + j, token] for j, token in enumerate(continuation))
    if needs_eos:
        total += torch.logsumexp(logp[-1, eos_ids], dim=0)
    return math.exp(float(total))


def test_default_surface_forms_add_capitalized_and_spaced_variants():
    assert default_surface_forms(["7", "heads"], {"heads": ["h"]}, "plain") == {
        "7": ["7", " 7"],
        "heads": ["heads", "h", "Heads", "H", " heads", " h", " Heads", " H"],
    }
    assert default_surface_forms(["blue", "Blue"]) == {"blue": ["blue", "Blue"], "Blue": []}


@pytest.mark.parametrize("prompt", ["Pick a random digit.", "Flip a coin."])
def test_chat_scores_equal_brute_force_scoring(chat_backend, prompt):
    loaded = chat_backend.loaded
    rendered = chat_backend.render(prompt, "chat")
    options = {
        "digit": ["7", "3", "I pick 5.", "My digit is 8"],  # continuations of different lengths
        "coin": ["Heads", "Tails", "It is tails"],
    }
    exact = option_probabilities(
        loaded.model, loaded.tokenizer, rendered, options, eos_token_ids=loaded.eos_token_ids
    )
    expected = {
        option: sum(
            brute_force(loaded.model, loaded.tokenizer, rendered, form, loaded.eos_token_ids, True)
            for form in forms
        )
        for option, forms in options.items()
    }
    covered = sum(expected.values())
    assert exact.covered_mass == pytest.approx(covered, rel=1e-4)
    for option in options:
        assert exact.probabilities[option] == pytest.approx(expected[option] / covered, rel=1e-4)
    assert 0 < exact.covered_mass <= 1


def test_plain_prompts_end_answers_at_eos_or_newline(plain_backend):
    loaded = plain_backend.loaded
    rendered = plain_backend.render("Pick a random digit.", "plain")
    assert rendered.endswith("Answer:")
    exact = plain_backend.option_probabilities(rendered, {"7": [" 7"], "2": [" 2"]})
    expected = {
        digit: sum(
            brute_force(loaded.model, loaded.tokenizer, rendered, text, loaded.eos_token_ids, eos)
            for text, eos in ((f" {digit}", True), (f" {digit}\n", False))
        )
        for digit in ("7", "2")
    }
    assert exact.covered_mass == pytest.approx(sum(expected.values()), rel=1e-4)
    assert exact.probabilities["7"] == pytest.approx(
        expected["7"] / sum(expected.values()), rel=1e-4
    )


def test_exact_probabilities_agree_with_tree_sampling(chat_backend):
    """Exact P(answer text) vs the tree sampler's frequency of exactly that completion:
    chi-square goodness of fit at the 1% level (fixed seed)."""
    rendered = chat_backend.render("Pick a random digit.", "chat")
    forms = {"7": ["7"], "3": ["3"], "4": ["4"], "9": ["9"], "5": ["I pick 5."]}
    exact = chat_backend.option_probabilities(rendered, forms)
    n = 20_000
    counts = chat_backend.sample(rendered, SamplingParams(n=n, max_new_tokens=6), seed=11)
    # Raw P(exactly this text, then EOS); forms this model rarely says are pooled with the rest.
    raw = {forms[o][0]: exact.probabilities[o] * exact.covered_mass for o in forms}
    pvalue, _ = goodness_of_fit(counts, raw, n)
    assert pvalue > SIGNIFICANCE, (pvalue, raw, counts)


def brute_force_options(backend, rendered, forms) -> dict[str, float]:
    """Raw option probabilities (sum over forms, each then EOS) by brute-force scoring."""
    loaded = backend.loaded
    return {
        option: sum(
            brute_force(loaded.model, loaded.tokenizer, rendered, form, loaded.eos_token_ids, True)
            for form in option_forms
        )
        for option, option_forms in forms.items()
    }


def test_uncovered_options_give_zero_mass_and_sum_to_one_otherwise(chat_backend):
    """The mass outside the options' forms (chatter, other answers) is left out: the options
    are renormalized over what they cover, and covered_mass is that covered total."""
    rendered = chat_backend.render("Name a color.", "chat")
    forms = default_surface_forms(["blue", "red", "green"])
    exact = chat_backend.option_probabilities(rendered, forms)
    raw = brute_force_options(chat_backend, rendered, forms)
    covered = sum(raw.values())
    assert sum(exact.probabilities.values()) == pytest.approx(1.0)
    assert exact.covered_mass == pytest.approx(covered, rel=1e-4)
    for option in forms:
        assert exact.probabilities[option] == pytest.approx(raw[option] / covered, rel=1e-4)
    assert 0 < exact.covered_mass <= 1


def test_every_option_gets_a_probability_even_with_many_forms(chat_backend):
    rendered = chat_backend.render("Pick a random digit.", "chat")
    forms = default_surface_forms(DIGITS)
    exact = chat_backend.option_probabilities(rendered, forms)
    assert list(exact.probabilities) == DIGITS
    raw = brute_force_options(chat_backend, rendered, forms)
    covered = sum(raw.values())
    for digit in DIGITS:
        assert exact.probabilities[digit] == pytest.approx(raw[digit] / covered, rel=1e-4)
    # the most likely answer is the model's own, whichever digit training made it
    assert max(exact.probabilities, key=exact.probabilities.get) == max(raw, key=raw.get)
