"""The prefix-tree sampler against transformers' own ``generate`` on a real tiny model."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare
from stat_checks import homogeneity_pvalue
from tiny_models import cached_tiny_model
from transformers import GenerationConfig

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.sampling import (
    TreeSampler,
    encode_prompt,
    logits_processors,
    split_counts,
    split_with_uniforms,
)

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


def exact_completions(
    model, tokenizer, rendered, eos_ids, *, max_new_tokens: int, stop: tuple[str, ...] = ()
) -> dict[str, float]:
    """The exact distribution of completion texts with at most two new tokens at temperature 1
    (no top-k, no top-p), from the model's own next-token probabilities: one forward pass for
    the first token, one batched pass over every possible first token for the second.

    Written from the sampling contract, independently of the sampler: a branch ends at an EOS
    id (not part of its text) or after ``max_new_tokens``; its text is the decoded new tokens
    (special tokens skipped), cut before the first stop string.
    """
    assert max_new_tokens in (1, 2)
    ids = torch.tensor([encode_prompt(tokenizer, rendered)])
    with torch.inference_mode():
        first = torch.softmax(model(ids).logits[0, -1].double(), dim=-1)
        vocab = len(first)
        if max_new_tokens == 2:
            extended = torch.cat([ids.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
            second = torch.softmax(model(extended).logits[:, -1].double(), dim=-1)
    eos = set(eos_ids)
    paths: list[list[int]] = []
    probabilities: list[float] = []
    for t1 in range(vocab):
        if t1 in eos or max_new_tokens == 1:
            paths.append([] if t1 in eos else [t1])
            probabilities.append(first[t1].item())
            continue
        joint = (first[t1] * second[t1]).tolist()
        for t2 in range(vocab):
            paths.append([t1] if t2 in eos else [t1, t2])
            probabilities.append(joint[t2])
    exact: Counter[str] = Counter()
    for text, p in zip(tokenizer.batch_decode(paths, skip_special_tokens=True), probabilities):
        cuts = [pos for pos in (text.find(s) for s in stop) if pos >= 0]
        exact[text[: min(cuts)] if cuts else text] += p
    return dict(exact)


def goodness_of_fit_pvalue(counts: dict[str, int], exact: dict[str, float]) -> float:
    """Chi-square goodness-of-fit p-value of sampled text counts against exact probabilities;
    texts expected fewer than 5 times are pooled into one "other" cell."""
    n = sum(counts.values())
    kept = [text for text, p in exact.items() if n * p >= 5]
    observed = [counts.get(text, 0) for text in kept]
    expected = [n * exact[text] for text in kept]
    observed.append(n - sum(observed))
    expected.append(n - sum(expected))
    if expected[-1] < 5:  # too little left over for its own cell: merge it into the last kept
        observed[-2] += observed.pop()
        expected[-2] += expected.pop()
    assert len(kept) >= 3, "too few categories for a meaningful test"
    return chisquare(observed, expected).pvalue


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
    loaded = backend.loaded
    counts = backend.sample(rendered, SamplingParams(n=N, max_new_tokens=1), seed=0)
    exact = exact_completions(
        loaded.model, loaded.tokenizer, rendered, loaded.eos_token_ids, max_new_tokens=1
    )
    assert set(counts) <= set(exact)  # every completion is one token (or EOS: "")
    assert goodness_of_fit_pvalue(counts, exact) > SIGNIFICANCE
    result = backend.sampler.sample(rendered, SamplingParams(n=N, max_new_tokens=3), seed=0)
    assert len(result.widths) <= 3


def test_eos_ends_branches_and_is_not_in_the_text(backend, rendered):
    """Two-token completions against their exact distribution: a branch whose second token
    is EOS is a one-token leaf whose text has no EOS in it."""
    loaded = backend.loaded
    counts = backend.sample(rendered, SamplingParams(n=N, max_new_tokens=2), seed=0)
    exact = exact_completions(
        loaded.model, loaded.tokenizer, rendered, loaded.eos_token_ids, max_new_tokens=2
    )
    assert not any("<|im_end|>" in text for text in counts)
    assert set(counts) <= set(exact)
    assert goodness_of_fit_pvalue(counts, exact) > SIGNIFICANCE
    longer = backend.sample(rendered, SamplingParams(n=N, max_new_tokens=8), seed=0)
    assert sum(longer.values()) == N
    assert not any("<|im_end|>" in text for text in longer)


def test_every_eos_id_ends_a_branch(backend, rendered):
    loaded = backend.loaded
    seven = loaded.tokenizer.convert_tokens_to_ids("7")
    eos = [*loaded.eos_token_ids, seven]
    sampler = TreeSampler(loaded.model, loaded.tokenizer, eos)
    counts = sampler.sample(rendered, SamplingParams(n=N, max_new_tokens=2), seed=0).counts
    exact = exact_completions(loaded.model, loaded.tokenizer, rendered, eos, max_new_tokens=2)
    # the token "7" now ends its branch and is not in the text: "7" alone is never a completion
    assert "7" not in counts and "7" not in exact
    assert set(counts) <= set(exact)
    assert goodness_of_fit_pvalue(counts, exact) > SIGNIFICANCE


def test_stop_strings_cut_the_completion(backend, rendered):
    loaded = backend.loaded
    stop = (" ", "!")
    counts = backend.sample(rendered, SamplingParams(n=N, max_new_tokens=2, stop=stop), seed=0)
    exact = exact_completions(
        loaded.model, loaded.tokenizer, rendered, loaded.eos_token_ids, max_new_tokens=2,
        stop=stop,
    )
    uncut = exact_completions(
        loaded.model, loaded.tokenizer, rendered, loaded.eos_token_ids, max_new_tokens=2
    )
    cut_mass = sum(p for text, p in uncut.items() if any(s in text for s in stop))
    assert N * cut_mass >= 5, "the stop strings must matter for this model, else no power"
    assert sum(counts.values()) == N
    assert not any(" " in text or "!" in text for text in counts)
    assert set(counts) <= set(exact)
    assert goodness_of_fit_pvalue(counts, exact) > SIGNIFICANCE


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


def test_rows_split_in_chunks_draw_exactly_what_they_draw_together():
    """The sampling step's out-of-memory retry splits a depth's rows into chunks: each chunk
    takes its rows' uniforms and is shifted by its rows' index among all, so the cells are
    the whole split's, bit for bit."""
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(4 * torch.randn(37, 500, generator=generator), dim=-1)
    counts = torch.randint(1, 300, (37,), generator=generator)
    uniforms = torch.rand(int(counts.sum()), generator=generator, dtype=torch.float64)
    whole = torch.stack(split_with_uniforms(probs, counts, uniforms))
    starts = [0, *counts.cumsum(0).tolist()]
    pieces = []
    for first, last in [(0, 1), (1, 10), (10, 11), (11, 37)]:
        rows, tokens, child = split_with_uniforms(
            probs[first:last], counts[first:last], uniforms[starts[first]:starts[last]], first)
        pieces.append(torch.stack([rows + first, tokens, child]))
    assert torch.equal(torch.cat(pieces, dim=1), whole)
    assert len(whole[0].unique()) == 37 and whole[2].sum() == counts.sum()
