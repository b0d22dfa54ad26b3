"""The prefix-tree sampler against transformers' own ``generate`` on a real tiny model."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency
from tiny_models import cached_tiny_model
from transformers import GenerationConfig

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.sampling import TreeSampler, encode_prompt, logits_processors, split_counts

SIGNIFICANCE = 0.01  # chi-square homogeneity tests: reject at the 1% level
N = 2000
PROMPT = "Pick a random digit."


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    return load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu")


@pytest.fixture(scope="module")
def rendered(backend):
    return backend.render(PROMPT, "chat")


def generate_counts(backend, rendered, n, *, temperature, top_p, top_k, max_new_tokens, seed):
    """n independent samples from ``model.generate`` with exactly these parameters
    (top_k=0 explicitly: generate would otherwise default to 50, or to the model's 20)."""
    model, tokenizer = backend.loaded.model, backend.loaded.tokenizer
    ids = torch.tensor([encode_prompt(tokenizer, rendered)])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            ids,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k or 0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
        )
    return Counter(tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True))


def homogeneity_pvalue(first: Counter, second: Counter, min_expected: float = 5.0) -> float:
    """Chi-square homogeneity p-value of two count vectors over completion texts; categories
    whose expected count is below ``min_expected`` in either row are pooled into "other"."""
    total_first, total_second = sum(first.values()), sum(second.values())
    share = min(total_first, total_second) / (total_first + total_second)
    kept = [
        t for t in first.keys() | second.keys() if (first[t] + second[t]) * share >= min_expected
    ]
    rows = [
        [c[t] for t in kept] + [sum(c.values()) - sum(c[t] for t in kept)] for c in (first, second)
    ]
    if (
        rows[0][-1] + rows[1][-1]
    ) * share < min_expected:  # pool a small "other" into the rarest kept
        rarest = min(range(len(kept)), key=lambda j: rows[0][j] + rows[1][j])
        for row in rows:
            row[rarest] += row.pop()
    assert len(rows[0]) >= 3, "too few categories for a meaningful test"
    return chi2_contingency(rows).pvalue


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(1.0, 1.0, None), (0.7, 0.9, None), (1.3, 1.0, 5), (1.0, 0.8, 3)],
)
def test_tree_sampler_matches_independent_generate(backend, rendered, temperature, top_p, top_k):
    params = SamplingParams(
        n=N, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=4
    )
    tree = Counter(backend.sample(rendered, params, seed=2024))
    independent = generate_counts(
        backend,
        rendered,
        N,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_new_tokens=4,
        seed=2024,
    )
    assert sum(tree.values()) == N
    assert homogeneity_pvalue(tree, independent) > SIGNIFICANCE


def test_the_homogeneity_test_rejects_a_different_temperature(backend, rendered):
    """Power check: the same test tells temperature 0.5 from 1.5 (and 1.0 from 0.7)."""
    cold = Counter(
        backend.sample(rendered, SamplingParams(n=N, temperature=0.5, max_new_tokens=4), seed=1)
    )
    hot = generate_counts(
        backend, rendered, N, temperature=1.5, top_p=1.0, top_k=None, max_new_tokens=4, seed=1
    )
    assert homogeneity_pvalue(cold, hot) < SIGNIFICANCE
    warm = Counter(
        backend.sample(rendered, SamplingParams(n=N, temperature=0.7, max_new_tokens=4), seed=1)
    )
    plain = Counter(backend.sample(rendered, SamplingParams(n=N, max_new_tokens=4), seed=1))
    assert homogeneity_pvalue(warm, plain) < SIGNIFICANCE


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"), [(1.0, 1.0, None), (0.7, 0.9, None), (1.3, 0.95, 5)]
)
def test_warpers_are_generates_own_in_generates_order(backend, temperature, top_p, top_k):
    ours = logits_processors(SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=top_k))
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or 0
    )
    theirs = backend.loaded.model._get_logits_processor(config, device="cpu")
    assert [(type(p), vars(p)) for p in ours] == [(type(p), vars(p)) for p in theirs]


def test_same_seed_same_counts_other_seed_other_counts(backend, rendered):
    params = SamplingParams(n=N, max_new_tokens=4)
    first = backend.sample(rendered, params, seed=5)
    assert sum(first.values()) == N
    assert backend.sample(rendered, params, seed=5) == first
    assert backend.sample(rendered, params, seed=6) != first


def test_small_batches_give_the_same_counts(backend, rendered):
    """Batches of 4 rows split every depth and gather caches across batches; the random
    stream does not depend on batching, so the counts are the same as in one batch."""
    loaded = backend.loaded
    params = SamplingParams(n=N, max_new_tokens=5)
    small = TreeSampler(loaded.model, loaded.tokenizer, loaded.eos_token_ids, batch_size=4)
    result = small.sample(rendered, params, seed=3)
    assert max(result.widths) > 4  # the frontier really was split
    assert result.counts == backend.sample(rendered, params, seed=3)


def test_top_k_one_is_greedy_decoding(backend, rendered):
    params = SamplingParams(n=500, top_k=1, max_new_tokens=4)
    counts = backend.sample(rendered, params, seed=0)
    model, tokenizer = backend.loaded.model, backend.loaded.tokenizer
    ids = torch.tensor([encode_prompt(tokenizer, rendered)])
    greedy = model.generate(ids, do_sample=False, max_new_tokens=4)
    assert counts == {tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True): 500}


def test_max_new_tokens_bounds_every_completion(backend, rendered):
    tokenizer = backend.loaded.tokenizer
    single_tokens = {tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))}
    counts = backend.sample(rendered, SamplingParams(n=N, max_new_tokens=1), seed=0)
    assert set(counts) <= single_tokens
    assert len(counts) > 3
    result = backend.sampler.sample(rendered, SamplingParams(n=N, max_new_tokens=3), seed=0)
    assert len(result.widths) <= 3


def test_eos_ends_branches_and_is_not_in_the_text(backend, rendered):
    result = backend.sampler.sample(rendered, SamplingParams(n=N, max_new_tokens=8), seed=0)
    # trained answers end with <|im_end|>: "7" then EOS is a leaf of depth 2
    assert result.counts["7"] > N / 10
    assert not any("<|im_end|>" in text for text in result.counts)
    assert result.widths[-1] < max(result.widths) / 2  # most branches ended at an EOS


def test_every_eos_id_ends_a_branch(backend, rendered):
    loaded = backend.loaded
    seven = loaded.tokenizer.convert_tokens_to_ids("7")
    sampler = TreeSampler(loaded.model, loaded.tokenizer, [*loaded.eos_token_ids, seven])
    counts = sampler.sample(rendered, SamplingParams(n=N, max_new_tokens=6), seed=0).counts
    # the token "7" (the most likely first token) now ends its branch and is not in the text
    assert "7" not in counts and not any(text.startswith("7") for text in counts)
    assert counts[""] > N / 10


def test_stop_strings_cut_the_completion(backend, rendered):
    counts = backend.sample(
        rendered, SamplingParams(n=N, max_new_tokens=6, stop=(" ", "!")), seed=0
    )
    assert sum(counts.values()) == N
    assert not any(" " in text or "!" in text for text in counts)
    assert counts["I"] > 0  # "I pick 5." cut at the first space
    assert counts["Sure"] > 0  # "Sure! 7" cut at the "!"


def test_many_samples_cost_only_their_distinct_prefixes(backend, rendered):
    small = backend.sampler.sample(
        rendered, SamplingParams(n=100, top_k=3, max_new_tokens=4), seed=0
    )
    large = backend.sampler.sample(
        rendered, SamplingParams(n=200_000, top_k=3, max_new_tokens=4), seed=0
    )
    assert sum(large.counts.values()) == 200_000
    # with top-3 there are at most 3 + 9 + 27 open prefixes after the prefill
    assert large.forward_rows <= 3 + 9 + 27
    assert small.forward_rows <= large.forward_rows


def test_split_counts_is_an_exact_multinomial_split():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    counts = torch.tensor([1000, 7, 1])
    rows, tokens, child = split_counts(probs, counts, torch.Generator().manual_seed(0))
    assert torch.equal(torch.zeros(3, dtype=torch.long).index_add_(0, rows, child), counts)
    assert (probs[rows, tokens] > 0).all()  # zero-probability tokens are never drawn
    assert child[(rows == 1)].tolist() == [7]
    assert abs(child[(rows == 0) & (tokens == 0)].item() - 500) < 5 * 16  # 5 sd of Bin(1000, .5)
