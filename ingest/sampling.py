"""The prefix-tree sampler: N independent samples at the cost of the distinct prefixes.

Drawing N samples from an autoregressive model is, in distribution, the same as: run the
prompt once, draw how many of the N samples take each next token from ``Multinomial(N, q)``
(``q`` the next-token distribution after temperature, top-k and top-p), and recurse into
every token that got a count, with that count, reusing the parent's KV cache. A branch ends
at an end-of-sequence token, a stop string or ``max_new_tokens``; every leaf is a completion
with its count, and the counts sum to N (see docs/ingest.md).

How it runs (:class:`TreeSampler`):

- The prompt is prefilled once. At each depth all open branches have the same length, so
  they go through the model as ONE batched forward pass of one new token each (no padding),
  on a KV cache built by selecting each child's parent row from the previous depth's cache.
  Rows are chunked into batches of at most ``batch_size`` ("auto": start at 1024 rows and
  halve on ``torch.OutOfMemoryError``); a batch's cache may gather rows from several parent
  batches.
- Logits are taken in float32 and go through transformers' own logits warpers
  (``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``) in the order that
  ``generate`` applies them (``GenerationMixin._get_logits_processor``), then softmax, exactly
  as ``generate(do_sample=True)`` does. Only the user's parameters apply: ``top_k=None`` means
  no top-k even though transformers' ``generate`` would default to 50, and nothing from a
  model's ``generation_config`` (sampling defaults, repetition penalty...) leaks in.
- Each row's count is split over the next tokens by inverse-CDF draws (float64 cumulative
  sums, uniforms, binary search; :func:`split_counts`), vectorized over all rows of the
  depth: O(N + rows x vocabulary) per depth, no Python loop per sample. The uniforms come
  from a ``torch.Generator`` on the model's device seeded with the given seed, consumed in
  the same order whatever the batch size, so the same seed gives the same counts.
- Memory: all open branches of a depth keep their KV cache (and next-token logits) until the
  next depth, so peak memory grows with the widest depth, at most N rows: like
  ``generate(num_return_sequences=N)``, never more. High-entropy prompts with very large N
  need memory accordingly.
- Completion text = ``tokenizer.decode(new tokens, skip_special_tokens=True)`` without the
  EOS token; a completion that contains a stop string is cut before its first occurrence;
  equal texts are merged.

- Token entropy: at every depth the sampler holds each open branch's next-token distribution,
  so it records, per generated position, the count-weighted sum of their entropies (bits)
  and the number of tokens drawn (:meth:`TreeSample.token_entropy`): exact given the sampled
  paths, at the cost of one pass over the vocabulary per branch (no forward pass).

The prompt's token ids come from :func:`encode_prompt`.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from catalog.errors import ModelLoadError
from ingest.backends import SamplingParams, TokenEntropy

AUTO_BATCH_START = 1024


def encode_prompt(tokenizer, rendered: str) -> list[int]:
    """Token ids of a rendered prompt, as the model must see it.

    The tokenizer's special tokens (e.g. BOS) are added unless the rendered text already starts
    with the BOS token's text (chat templates usually write it themselves), so it is never
    doubled and never missing.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and rendered.startswith(bos))
    return tokenizer(rendered, add_special_tokens=add_special)["input_ids"]


def cache_argument(model) -> str:
    """The forward() keyword for the KV cache: transformers 5 renamed ``past_key_values`` to
    ``cache``, and a model silently ignores a keyword it does not know."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def logits_processors(params: SamplingParams):
    """transformers' warpers for ``params``, in the order ``generate`` applies them."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None:
        processors.append(TopKLogitsWarper(top_k=params.top_k, min_tokens_to_keep=1))
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=params.top_p, min_tokens_to_keep=1))
    return processors


def split_counts(probs, counts, generator):
    """Draw ``Multinomial(counts[r], probs[r])`` for every row r at once.

    Returns ``(rows, tokens, child_counts)`` for the nonzero cells, sorted by row then token.
    Each of a row's ``count`` samples is an inverse-CDF draw: a uniform from ``generator``
    located by binary search in the row's cumulative distribution, summed in float64 (a
    float32 running sum over a large vocabulary would shift the rare tokens' probabilities;
    ``torch.multinomial`` sums in float32 for more than one sample and is slow for one).
    Rows are grouped by the power of two at or above their count, so one batched search
    serves many rows with at most twice the draws needed: O(N + rows x vocabulary).
    """
    import torch

    n_rows, vocab = probs.shape
    widths = torch.ones_like(counts)
    many = counts > 1
    widths[many] = 2 ** (torch.log2((counts[many] - 1).double()).floor().long() + 1)
    rows, tokens = [], []
    for width in torch.unique(widths).tolist():
        selected = (widths == width).nonzero().squeeze(1)
        group = probs if len(selected) == n_rows else probs[selected]
        cdf = torch.cumsum(group, dim=-1, dtype=torch.float64)
        uniforms = (
            torch.rand(
                (len(selected), width),
                generator=generator,
                dtype=torch.float64,
                device=probs.device,
            )
            * cdf[:, -1:]
        )
        # right=True skips zero-probability tokens; a uniform rounded up to the total (p ~ 2^-53)
        # would fall off the end, where the left search finds the last possible token
        draws = torch.searchsorted(cdf, uniforms, right=True)
        draws = torch.where(draws == vocab, torch.searchsorted(cdf, uniforms), draws)
        keep = torch.arange(width, device=probs.device) < counts[selected, None]
        rows.append(selected[:, None].expand(-1, width)[keep])
        tokens.append(draws[keep])
    keys, child_counts = torch.unique(
        torch.cat(rows) * vocab + torch.cat(tokens), return_counts=True
    )
    return keys // vocab, keys % vocab, child_counts


@dataclass
class TreeSample:
    """What one tree sampling produced: the completions and what it cost.

    ``forward_rows`` counts the rows run through the model after the prefill (one per open
    branch per depth); ``forward_calls`` the batched forward passes (prefill included);
    ``widths`` the number of open branches at each depth.
    """

    counts: dict[str, int]
    prompt_tokens: int
    forward_rows: int = 0
    forward_calls: int = 0
    widths: list[int] = field(default_factory=list)
    # Per depth t: sum over the open branches of (their count) x (entropy in bits of the
    # distribution they drew from), and the sum of their counts (docs/metrics.md, 13).
    entropy_bits: list[float] = field(default_factory=list)
    entropy_tokens: list[int] = field(default_factory=list)

    def token_entropy(self) -> TokenEntropy:
        return TokenEntropy(tuple(self.entropy_bits), tuple(self.entropy_tokens))


@dataclass
class _Batch:
    """Consecutive frontier rows [start, start + size) and the KV cache holding them."""

    start: int
    size: int
    cache: Any


class TreeSampler:
    """Samples completions of one loaded model with the prefix tree.

    ``eos_token_ids``: tokens that end a branch (the generation config's EOS ids);
    ``batch_size``: most rows per forward pass, or "auto" (start at 1024, halve on
    out-of-memory; the size that worked is kept for the next call).
    """

    def __init__(
        self, model, tokenizer, eos_token_ids: Sequence[int], *, batch_size: int | str = "auto"
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.auto_batch = batch_size == "auto"
        self.batch_size = AUTO_BATCH_START if self.auto_batch else int(batch_size)
        self.cache_kwarg = cache_argument(model)
        self.keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._new_cache()  # an unsupported cache type fails when the model loads, not mid-job

    def sample(self, rendered: str, params: SamplingParams, seed: int) -> TreeSample:
        """Draw ``params.n`` completions of the rendered prompt; see the module docstring."""
        import torch

        with torch.inference_mode():
            return self._sample(encode_prompt(self.tokenizer, rendered), params, seed)

    def _sample(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> TreeSample:
        import torch

        device = self.model.device
        generator = torch.Generator(device=device).manual_seed(seed)
        processors = logits_processors(params)
        prompt = torch.tensor([prompt_ids], device=device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long)
        result = TreeSample(counts={}, prompt_tokens=len(prompt_ids))
        leaves: Counter[str] = Counter()

        cache = self._new_cache()
        extra = {"logits_to_keep": 1} if self.keep_last_logits else {}
        logits = self._forward(prompt, cache, **extra)
        result.forward_calls = 1
        batches = [_Batch(0, 1, cache)]
        sequences = torch.zeros((1, 0), dtype=torch.long)  # new tokens of each open branch (CPU)
        counts = torch.tensor([params.n], device=device)

        for depth in range(1, params.max_new_tokens + 1):
            result.widths.append(len(sequences))
            input_ids = torch.cat([prompt.expand(len(sequences), -1), sequences.to(device)], dim=1)
            probs = torch.softmax(processors(input_ids, logits), dim=-1)
            # The distributions every branch draws from are here already: their entropies
            # cost one pass over the vocabulary (one temporary the size of probs, summed in
            # float64), no forward pass.
            entropies = torch.special.entr(probs).sum(dim=-1, dtype=torch.float64) / math.log(2)
            result.entropy_bits.append(float((entropies * counts.double()).sum()))
            result.entropy_tokens.append(int(counts.sum()))
            parents, tokens, child_counts = (
                t.cpu() for t in split_counts(probs, counts, generator)
            )
            sequences = torch.cat([sequences[parents], tokens[:, None]], dim=1)
            ended = torch.isin(tokens, eos) | (depth == params.max_new_tokens)
            texts, weights = self._texts(sequences, ended, params.stop), child_counts.tolist()
            for i in ended.nonzero().squeeze(1).tolist():
                leaves[texts[i]] += weights[i]
            open_rows = (~ended).nonzero().squeeze(1)
            if len(open_rows) == 0:
                break
            sequences, counts = sequences[open_rows], child_counts[open_rows].to(device)
            batches, logits = self._step(batches, parents[open_rows], tokens[open_rows], result)
        result.counts = dict(leaves)
        return result

    def _texts(self, sequences, ended, stop: tuple[str, ...]) -> list[str | None]:
        """Decoded texts of the branches that end here (``ended`` is updated for stop strings).

        A branch that ends on EOS is decoded without it; with stop strings every branch is
        decoded, and one whose text contains a stop string ends, cut before it.
        """
        eos = set(self.eos_token_ids)
        rows = range(len(sequences)) if stop else ended.nonzero().squeeze(1).tolist()
        ids = [sequences[i].tolist() for i in rows]
        ids = [seq[:-1] if seq[-1] in eos else seq for seq in ids]
        decoded = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        texts: list[str | None] = [None] * len(sequences)
        for i, text in zip(rows, decoded):
            cut = min((pos for pos in (text.find(s) for s in stop) if pos >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                ended[i] = True
            texts[i] = text
        return texts

    def _step(self, batches: list[_Batch], parents, tokens, result: TreeSample):
        """One depth: run ``tokens`` on their parents' caches, in batches; return the new
        frontier's batches and its next-token logits (float32, one row per branch)."""
        import torch

        device = self.model.device
        new_batches, logits = [], []
        start = 0
        while start < len(parents):
            size = min(self.batch_size, len(parents) - start)
            try:
                cache = select_rows(batches, parents[start : start + size])
                ids = tokens[start : start + size, None].to(device)
                logits.append(self._forward(ids, cache))
            except torch.OutOfMemoryError:
                if not self.auto_batch or size == 1:
                    raise
                cache = None
                self.batch_size = max(1, size // 2)
                torch.cuda.empty_cache()
                continue
            new_batches.append(_Batch(start, size, cache))
            result.forward_rows += size
            result.forward_calls += 1
            start += size
        return new_batches, torch.cat(logits)

    def _new_cache(self):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        unsupported = {
            type(layer).__name__ for layer in cache.layers if not isinstance(layer, DynamicLayer)
        }
        if unsupported:
            # recurrent / linear-attention states cannot be gathered row by row like keys
            raise ModelLoadError(
                f"the tree sampler needs an attention KV cache; this model's cache has "
                f"{', '.join(sorted(unsupported))} layers"
            )
        return cache

    def _forward(self, input_ids, cache, **extra):
        output = self.model(
            input_ids=input_ids, use_cache=True, **{self.cache_kwarg: cache}, **extra
        )
        return output.logits[:, -1].float()


def select_rows(batches: list[_Batch], rows) -> Any:
    """A new KV cache holding the frontier ``rows`` (sorted), gathered from ``batches``.

    The new cache shares no layer objects with its sources: the forward pass that extends it
    replaces its tensors (torch.cat) rather than writing into them, so the parents stay intact
    for their other children, and a failed (out-of-memory) batch can simply be retried. When
    the rows are exactly one source batch, in order, its tensors are reused without a copy.
    """
    import torch

    parts = []
    for batch in batches:
        mask = (rows >= batch.start) & (rows < batch.start + batch.size)
        if mask.any():
            parts.append((batch.cache, rows[mask] - batch.start))
    template = parts[0][0]
    cache = copy.copy(template)
    cache.layers = [copy.copy(layer) for layer in template.layers]
    source_size = next((b.size for b in batches if b.cache is template), None)
    if (
        len(parts) == 1
        and len(rows) == source_size
        and torch.equal(parts[0][1], torch.arange(source_size))
    ):
        return cache
    # All children of one parent (always so at the first depth): a broadcast view, no copy;
    # the forward pass's torch.cat materializes it once.
    single_parent = len(parts) == 1 and bool((parts[0][1] == parts[0][1][0]).all())
    for index, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        for name in ("keys", "values"):
            if single_parent:
                tensor = getattr(layer, name)
                row = int(parts[0][1][0])
                setattr(layer, name, tensor[row : row + 1].expand(len(rows), *tensor.shape[1:]))
                continue
            pieces = [
                getattr(source.layers[index], name).index_select(0, local.to(layer.keys.device))
                for source, local in parts
            ]
            setattr(layer, name, pieces[0] if len(pieces) == 1 else torch.cat(pieces))
    return cache
