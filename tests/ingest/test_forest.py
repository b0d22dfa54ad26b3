"""The tree sampler as a forest: many units in one tree pass, each with its own generator."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from stat_checks import homogeneity_pvalue
from tiny_models import PROMPTS, cached_tiny_model

from catalog.errors import InvalidInput
from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.prefix_cache import kv_bytes
from ingest.sampling import DRAW_BYTES_PER_CELL, TreeSampler, cache_argument

SIGNIFICANCE = 0.01  # chi-square homogeneity tests: reject at the 1% level


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    return load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu")


@pytest.fixture(scope="module")
def rendered(backend):
    return [backend.render(prompt, "chat") for prompt in PROMPTS]


def prompt_lengths(backend, rendered):
    return [len(backend.loaded.tokenizer(r)["input_ids"]) for r in rendered]


def test_a_forest_of_one_prompt_gives_each_unit_its_one_at_a_time_counts(backend, rendered):
    """Same-length prompts need no padding and each unit draws from its own generator, so a
    unit's counts change only if a batched forward pass rounds its logits differently
    (~1e-6 here) AND a uniform falls that close to a cumulative boundary: with fixed seeds
    they are exactly the same."""
    params = SamplingParams(n=300, max_new_tokens=6, stop=("\n",))
    requests = [(rendered[0], params, seed) for seed in range(12)]
    forest = backend.sample_many(requests)
    alone = [backend.sample(*request) for request in requests]
    assert [dict(c) for c in forest] == [dict(c) for c in alone]
    assert len({tuple(sorted(c.items())) for c in forest}) > 1  # the seeds really differ
    for counts, single in zip(forest, alone):
        # batched rows round differently in float32 (~1e-6): entropies equal up to that
        assert counts.token_entropy.tokens == single.token_entropy.tokens
        assert counts.token_entropy.bits == pytest.approx(single.token_entropy.bits, rel=1e-5)


def test_a_units_counts_do_not_depend_on_its_companions(backend, rendered):
    params = SamplingParams(n=500, max_new_tokens=6)
    target = (rendered[1], params, 42)
    first = backend.sample_many([target, (rendered[1], params, 1)])[0]
    second = backend.sample_many([(rendered[1], params, 7), (rendered[1], params, 8), target])[2]
    assert dict(first) == dict(second)


def test_padded_prompts_sample_the_same_distribution_as_alone(backend, rendered):
    """Prompts of different lengths are left-padded with a mask: in distribution (pooled over
    units, other seeds) each prompt's completions match one-unit-at-a-time sampling."""
    lengths = prompt_lengths(backend, rendered)
    assert len(set(lengths)) > 1  # the forest really pads
    params = SamplingParams(n=400, max_new_tokens=5)
    units = [(rendered[i % 3], params, 100 + i) for i in range(15)]
    forest = backend.sample_many(units)
    for p in range(3):
        pooled_forest, pooled_alone = Counter(), Counter()
        for i in range(p, 15, 3):
            pooled_forest.update(forest[i])
            pooled_alone.update(backend.sample(rendered[p], params, seed=900 + i))
        assert sum(pooled_forest.values()) == 5 * 400
        assert homogeneity_pvalue(pooled_forest, pooled_alone) > SIGNIFICANCE


def test_units_with_different_parameters_share_a_forest(backend, rendered):
    """Each unit keeps its own temperature, top-k/top-p, length, stop strings and n."""
    greedy = SamplingParams(n=50, top_k=1, max_new_tokens=4)
    hot = SamplingParams(n=700, temperature=1.5, top_p=0.9, max_new_tokens=3, stop=("e",))
    short = SamplingParams(n=20, max_new_tokens=1)
    requests = [(rendered[0], greedy, 1), (rendered[2], hot, 2), (rendered[1], short, 3)]
    forest = backend.sample_many(requests)
    assert [sum(c.values()) for c in forest] == [50, 700, 20]
    assert len(forest[0]) == 1  # greedy: one completion
    assert all("e" not in text for text in forest[1])
    for counts, request in zip(forest, requests):
        assert dict(counts) == dict(backend.sample(*request))


def test_a_memory_budget_splits_batches_and_keeps_the_counts(backend, rendered):
    """The out-of-memory path on a CPU: a batch over the KV budget is split and retried
    from its gathered rows, and the counts are those of an unlimited run."""
    loaded = backend.loaded
    params = SamplingParams(n=2000, max_new_tokens=6)
    requests = [(rendered[0], params, 5), (rendered[0], params, 6)]
    budgeted = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                           memory_budget=64 * 1024)
    small = budgeted.sample_forest(requests)
    assert budgeted.batch_size < 1024  # the budget really split the batches
    assert [t.counts for t in small] == [dict(backend.sample(*r)) for r in requests]
    assert all(t.forward_calls > 1 + len(t.widths) for t in small)


def test_a_fixed_batch_size_over_the_budget_fails(backend, rendered):
    loaded = backend.loaded
    rows = 4  # the budget holds 4 rows' sampling step, not 64 rows' KV cache
    fixed = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids, batch_size=64,
                        memory_budget=rows * vocabulary(loaded) * DRAW_BYTES_PER_CELL)
    with pytest.raises(torch.OutOfMemoryError, match="a batch of .* memory budget .*KV cache"):
        fixed.sample(rendered[0], SamplingParams(n=500, max_new_tokens=4), seed=1)


def vocabulary(loaded) -> int:
    return loaded.model.get_output_embeddings().weight.shape[0]


def test_an_out_of_memory_in_the_sampling_step_is_retried_in_chunks(backend, rendered):
    """The warpers, softmax and split of a depth hold several rows x vocabulary tensors: a
    chunk of rows over the budget is split and retried, and the counts are exactly those of
    an unlimited run with the same seeds (the chunks take their rows' share of the depth's
    uniforms). Units with different warpers and padded prompts share the chunks."""
    loaded = backend.loaded
    requests = [
        (rendered[0], SamplingParams(n=2000, max_new_tokens=6), 5),
        (rendered[1], SamplingParams(n=1500, max_new_tokens=5, temperature=1.4, top_p=0.9), 6),
        (rendered[2], SamplingParams(n=900, max_new_tokens=6, top_k=20), 7),
    ]
    rows = 3
    budgeted = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                           memory_budget=rows * vocabulary(loaded) * DRAW_BYTES_PER_CELL)
    chunked = budgeted.sample_forest(requests)
    unlimited = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids)
    whole = unlimited.sample_forest(requests)
    assert unlimited.draw_rows is None  # nothing was chunked without a budget
    assert budgeted.draw_rows is not None and budgeted.draw_rows <= rows
    assert max(sum(depth) for depth in zip(*(t.widths[:4] for t in chunked))) > 10 * rows
    assert [t.counts for t in chunked] == [t.counts for t in whole]
    assert [t.token_entropy().tokens for t in chunked] == [t.token_entropy().tokens for t in whole]
    for small, large in zip(chunked, whole):  # forward batches split too: ~1e-6 rounding
        assert small.token_entropy().bits == pytest.approx(large.token_entropy().bits, rel=1e-5)


def test_a_sampling_step_over_the_budget_for_one_row_fails(backend, rendered):
    loaded = backend.loaded
    budget = vocabulary(loaded) * DRAW_BYTES_PER_CELL - 1  # one row's step does not fit
    assert prompt_kv_bytes(loaded, rendered[0]) < budget  # its prefill does
    tiny = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                       memory_budget=budget)
    with pytest.raises(torch.OutOfMemoryError, match="sampling 1 rows .* memory budget"):
        tiny.sample(rendered[0], SamplingParams(n=50, max_new_tokens=3), seed=1)


def prompt_kv_bytes(loaded, rendered: str) -> int:
    """The KV cache of one prompt alone, in bytes."""
    from transformers import DynamicCache

    cache = DynamicCache(config=loaded.model.config)
    ids = loaded.tokenizer(rendered, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        loaded.model(input_ids=ids, use_cache=True, **{cache_argument(loaded.model): cache})
    return kv_bytes(cache)


def test_an_out_of_memory_in_the_prefill_and_the_gather_is_retried(backend, rendered):
    """A forest's prompts over the budget are prefilled in smaller passes, and a depth's
    rows are gathered only as many as fit (the budget is checked before the gather, the
    copy a real device can run out of memory in): the counts are those of an unlimited
    run with the same seeds."""
    loaded = backend.loaded
    requests = [(rendered[i % 3], SamplingParams(n=40, max_new_tokens=4), 20 + i)
                for i in range(6)]
    budget = int(2.5 * max(prompt_kv_bytes(loaded, r) for r in rendered))  # about 2 rows
    budgeted = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                           memory_budget=budget)
    split = budgeted.sample_forest(requests)
    assert budgeted.batch_size <= 2  # the prefill of 6 rows was split, and stayed so
    whole = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids)
    assert [t.counts for t in split] == [t.counts for t in whole.sample_forest(requests)]
    fixed = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids, batch_size=6,
                        memory_budget=budget)
    with pytest.raises(torch.OutOfMemoryError, match="a prefill of 6 rows .* memory budget"):
        fixed.sample_forest(requests)


def test_auto_batch_size_grows_back_on_the_next_call(backend, rendered):
    loaded = backend.loaded
    sampler = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                          memory_budget=64 * 1024)
    sampler.sample(rendered[0], SamplingParams(n=2000, max_new_tokens=6), seed=1)
    shrunk = sampler.batch_size
    sampler.memory_budget = None
    sampler.sample(rendered[0], SamplingParams(n=10, max_new_tokens=2), seed=1)
    assert sampler.batch_size == 2 * shrunk


def test_units_per_call_is_a_backend_option(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    spec = ModelSpec(str(path), backend_options={"units_per_call": "3"})
    assert load_backend(spec, device="cpu").units_per_call == 3
    for bad in (0, "many", True):
        with pytest.raises(InvalidInput, match="units_per_call"):
            load_backend(ModelSpec(str(path), backend_options={"units_per_call": bad}),
                         device="cpu")

