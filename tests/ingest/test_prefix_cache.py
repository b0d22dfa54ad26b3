"""The tree sampler's shared prompt KV: one copy per unit, the same counts as a copy per row."""

from __future__ import annotations

import pytest
import torch
from tiny_models import PROMPTS, build_tiny_model, cached_tiny_model

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.prefix_cache import SharedPrefixLayer, kv_bytes
from ingest.sampling import TreeSampler, encode_prompt


class FrontierBytes(TreeSampler):
    """The sampler, recording each depth's frontier: its rows and its KV cache's bytes (a
    shared prefix counted once), and the layer types of the prefill's cache."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frontier: list[tuple[int, int]] = []
        self.prefill_layers: list[type] = []

    def _prefill(self, units):
        batches, logits = super()._prefill(units)
        self.prefill_layers = [type(layer) for layer in batches[0].cache.layers]
        return batches, logits

    def _step(self, *args):
        batches, logits = super()._step(*args)
        caches = [batch.cache for batch in batches]
        self.frontier.append((sum(batch.size for batch in batches), kv_bytes(*caches)))
        return batches, logits


def sampler(loaded, **kwargs) -> FrontierBytes:
    return FrontierBytes(loaded.model, loaded.tokenizer, loaded.eos_token_ids, **kwargs)


def bytes_per_position(config, dtype) -> int:
    """Keys and values of one position of one row, all layers, from the model's config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element


def test_a_chatty_units_branches_hold_one_copy_of_the_prompt(tmp_path):
    """Random weights: nearly uniform next tokens, so the frontier fills its N rows at once.
    Each depth t of R rows holds R x (P + t) positions with a copy per row, and
    P + R x t with one shared copy: R - 1 prompts fewer, byte for byte."""
    path = build_tiny_model(tmp_path / "chatty")
    chatty = load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu")
    loaded, rendered = chatty.loaded, chatty.render(PROMPTS[0], "chat")
    prompt = len(encode_prompt(loaded.tokenizer, rendered))
    position = bytes_per_position(loaded.model.config, loaded.model.dtype)
    params = SamplingParams(n=400, max_new_tokens=6)
    shared, copied = sampler(loaded), sampler(loaded, share_prompt=False)
    assert shared.sample(rendered, params, 3).counts == copied.sample(rendered, params, 3).counts
    assert [rows for rows, _ in shared.frontier] == [rows for rows, _ in copied.frontier]
    assert max(rows for rows, _ in shared.frontier) > 300  # chatty: the saving is large
    for depth, ((rows, with_copies), (_, with_one)) in enumerate(
        zip(copied.frontier, shared.frontier), start=1
    ):
        assert with_copies == rows * (prompt + depth) * position
        assert with_one == (prompt + rows * depth) * position


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    return load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu")


def test_a_padded_forest_draws_the_same_counts_with_a_shared_prompt(backend):
    """Prompts of three lengths (left-padded), prefilled in passes of two units (one prefix
    tensor per layer for all of them), branches gathered across passes: the counts and
    entropies are those of a copy per row, bit for bit, whatever the batch size."""
    loaded = backend.loaded
    rendered = [backend.render(prompt, "chat") for prompt in PROMPTS]
    assert len({len(encode_prompt(loaded.tokenizer, r)) for r in rendered}) > 1
    requests = [(rendered[i % 3], SamplingParams(n=300, max_new_tokens=6, top_p=0.95), 50 + i)
                for i in range(5)]
    for batch_size in (2, "auto"):  # the same batches either way: the same rounding
        copied = sampler(loaded, batch_size=batch_size, share_prompt=False).sample_forest(requests)
        shared = sampler(loaded, batch_size=batch_size)
        result = shared.sample_forest(requests)
        assert shared.prefill_layers == [SharedPrefixLayer] * loaded.model.config.num_hidden_layers
        assert [t.counts for t in result] == [t.counts for t in copied]
        assert [t.widths for t in result] == [t.widths for t in copied]
        assert [t.entropy_bits for t in result] == [t.entropy_bits for t in copied]
    assert len({tuple(sorted(t.counts.items())) for t in copied}) == 5


def test_a_sliding_window_layer_keeps_a_copy_per_row_and_the_model_still_samples(backend):
    """A tiny Qwen2 with a full-attention and a sliding-window layer (window 4, shorter than
    the prompts): only the full-attention layer shares its prompt; the counts are those of
    a copy per row."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.cache_utils import DynamicSlidingWindowLayer

    tokenizer = backend.loaded.tokenizer
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        use_sliding_window=True, sliding_window=4,
        layer_types=["full_attention", "sliding_attention"],
    )
    model = Qwen2ForCausalLM(config).eval()
    eos = backend.loaded.eos_token_ids
    rendered = [backend.render(prompt, "chat") for prompt in PROMPTS]
    requests = [(rendered[i % 3], SamplingParams(n=200, max_new_tokens=6), 70 + i)
                for i in range(3)]
    shared = FrontierBytes(model, tokenizer, eos, batch_size=2)
    result = shared.sample_forest(requests)
    assert shared.prefill_layers == [SharedPrefixLayer, DynamicSlidingWindowLayer]
    copied = FrontierBytes(model, tokenizer, eos, batch_size=2, share_prompt=False)
    assert [t.counts for t in result] == [t.counts for t in copied.sample_forest(requests)]
    assert all(sum(t.counts.values()) == 200 for t in result)
    assert max(t.widths[-1] for t in result) > 10  # random weights: many branches
    assert all(later < earlier for (_, later), (_, earlier) in
               zip(shared.frontier, copied.frontier))
