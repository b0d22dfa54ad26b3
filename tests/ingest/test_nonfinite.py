"""No silent NaN: a unit whose logits are not finite fails instead of storing wrong counts."""

from __future__ import annotations

import pytest
import torch
from tiny_models import PROMPTS, cached_tiny_model

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.models import auto_dtype
from ingest.sampling import NonFiniteLogits

PARAMS = SamplingParams(n=200, max_new_tokens=4)


@pytest.fixture
def half_backend(tmp_path_factory):
    """The tiny model in float16, with its input embeddings untied from the output layer
    (so that one token's embedding can be broken without touching the others' logits)."""
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    backend = load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu",
                           dtype="float16")
    embeddings = backend.loaded.model.model.embed_tokens
    embeddings.weight = torch.nn.Parameter(embeddings.weight.detach().clone())
    return backend


def test_a_float16_overflow_fails_the_unit_with_the_dtype_named(half_backend):
    rendered = half_backend.render(PROMPTS[0], "chat")
    assert sum(half_backend.sample(rendered, PARAMS, seed=1).values()) == PARAMS.n
    with torch.no_grad():  # final hidden states past float16's 65504 become infinite
        half_backend.loaded.model.model.norm.weight.mul_(3e4)
    with pytest.raises(NonFiniteLogits, match="not finite .* in float16"):
        half_backend.sample(rendered, PARAMS, seed=1)
    with pytest.raises(NonFiniteLogits):
        half_backend.sample_many([(rendered, PARAMS, 1), (rendered, PARAMS, 2)])


def test_only_the_unit_with_non_finite_logits_fails_in_a_forest(half_backend):
    tokenizer = half_backend.loaded.tokenizer
    digit, coin = (half_backend.render(p, "chat") for p in PROMPTS[:2])
    coin_only = next(t for t in tokenizer(PROMPTS[1])["input_ids"]
                     if t not in tokenizer(PROMPTS[0])["input_ids"])
    healthy = half_backend.sample(digit, PARAMS, seed=1)
    with torch.no_grad():  # an infinite hidden state in the coin prompt only
        half_backend.loaded.model.model.embed_tokens.weight[coin_only] = float("inf")
    good, bad = half_backend.sampler.sample_forest([(digit, PARAMS, 1), (coin, PARAMS, 2)])
    assert isinstance(bad, NonFiniteLogits) and "float16" in str(bad)
    assert good.counts == dict(healthy)


def test_auto_dtype_is_never_float16():
    assert auto_dtype("cuda", native_bf16=True) == "bfloat16"
    assert auto_dtype("cuda", native_bf16=False) == "float32"  # V100, T4: emulated bf16
    assert auto_dtype("cpu", native_bf16=True) == "float32"
