"""The prefix-tree sampler: N independent samples at the cost of the distinct prefixes.

Drawing N samples from an autoregressive model is, in distribution, the same as: run the
prompt once, draw how many of the N samples take each next token from ``Multinomial(N, q)``
(``q`` the next-token distribution after temperature, top-k and top-p), and recurse into
every token that got a count, with that count, reusing the parent's KV cache. A branch ends
at an end-of-sequence token, a stop string or ``max_new_tokens``; every leaf is a completion
with its count, and the counts sum to N (see docs/ingest.md).

How it runs (:class:`TreeSampler`):

- Many units grow in one forest (:meth:`TreeSampler.sample_forest`): their prompts are
  prefilled together (left-padded, with an attention mask and position ids, when their
  lengths differ), and at each depth all open branches of all units have the same length,
  so they go through the model as ONE batched forward pass of one new token each, on a KV
  cache built by selecting each child's parent row from the previous depth's cache. Rows
  are chunked into batches of at most ``batch_size`` ("auto": start at 1024 rows, halve on
  out-of-memory, try twice the last size at the next call); a batch's cache may gather rows
  from several parent batches.
- Logits are taken in float32 (below float32, computed in float32 from the final hidden
  state: :class:`ingest.heads.Float32Head`) and go through transformers' own logits
  warpers (``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``) in the
  order that ``generate`` applies them (``GenerationMixin._get_logits_processor``), then
  softmax, exactly as ``generate(do_sample=True)`` does. Only the user's parameters apply:
  ``top_k=None`` means no top-k even though transformers' ``generate`` would default to 50,
  and nothing from a model's ``generation_config`` (sampling defaults, repetition
  penalty...) leaks in.
- Each row's count is split over the next tokens by inverse-CDF draws (float64 cumulative
  sums, uniforms, one binary search; :func:`split_with_uniforms`), vectorized over all rows
  of the depth: O(N + rows x vocabulary) per depth, no Python loop per sample. Each unit's
  uniforms come from its own ``torch.Generator`` on the model's device seeded with its
  seed, consumed in the same order whatever the batch size and whatever shares the
  forest, so the same seed gives the same counts.
- Memory: all open branches of a depth keep their KV cache (and next-token logits) until the
  next depth, so peak memory grows with the widest depth, at most N rows: like
  ``generate(num_return_sequences=N)``, never more; the branches of a unit share one copy
  of its prompt's KV (:mod:`ingest.prefix_cache`). An out-of-memory in a forward pass splits
  its batch; one in the sampling step (warpers, softmax, split) splits its chunk of rows,
  with the same counts (docs/ingest.md, memory).
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

import inspect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from catalog.errors import CatalogError, ModelLoadError
from ingest.backends import SamplingParams, TokenEntropy
from ingest.heads import Float32Head

AUTO_BATCH_START = 1024
# Working memory of the sampling step per row and token, at its peak: float32 probabilities
# and two float64 cumulative sums (the running sum, then the normalized one)
DRAW_BYTES_PER_CELL = 4 + 8 + 8


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
    """Draw ``Multinomial(counts[r], probs[r])`` for every row r at once, with uniforms from
    one ``generator`` (see :func:`split_with_uniforms`)."""
    import torch

    uniforms = torch.rand(
        int(counts.sum()), generator=generator, dtype=torch.float64, device=probs.device
    )
    return split_with_uniforms(probs, counts, uniforms)


def split_with_uniforms(probs, counts, uniforms, first_row: int = 0):
    """``Multinomial(counts[r], probs[r])`` for every row r at once, from ``uniforms`` (float64
    in [0, 1), ``counts[0]`` of them for row 0, then row 1's...).

    Returns ``(rows, tokens, child_counts)`` for the nonzero cells, sorted by row then token.
    Each sample is an inverse-CDF draw located by ONE binary search over all rows: every row's
    cumulative distribution (summed in float64: a float32 running sum over a large vocabulary
    would shift the rare tokens' probabilities; ``torch.multinomial`` sums in float32 for more
    than one sample) is normalized to [0, 1] and shifted by its row index, so the rows form
    one sorted sequence and a draw for row r is ``r + u``. The shift costs log2(rows) of the
    53 bits (probabilities resolved to ~2^-40 with 8192 rows). O(N + rows x vocabulary).
    ``first_row``: these rows are rows ``first_row...`` of a larger set, and are shifted by
    their index there, so a chunk of rows rounds exactly as it would among all of them (its
    draws are the same bits as the whole set's). Returned rows are local to ``probs``.
    """
    import torch

    n_rows, vocab = probs.shape
    cdf = torch.cumsum(probs, dim=-1, dtype=torch.float64)
    cdf = cdf / cdf[:, -1:]
    row_index = torch.arange(n_rows, device=probs.device)
    flat = (cdf + (row_index + first_row)[:, None]).flatten()
    del cdf
    draw_rows = torch.repeat_interleave(row_index, counts)
    values = (draw_rows + first_row) + uniforms
    # right=True skips zero-probability tokens; a draw rounded up to its row's end (r + u
    # rounds to r + 1) would fall into the next row, where the left search finds the row's
    # last possible token
    cells = torch.searchsorted(flat, values, right=True)
    overflow = cells >= (draw_rows + 1) * vocab
    cells = torch.where(overflow, torch.searchsorted(flat, values), cells)
    cells = torch.minimum(cells, (draw_rows + 1) * vocab - 1)
    keys, child_counts = torch.unique(cells, return_counts=True)
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


class NonFiniteLogits(CatalogError):
    """A unit's next-token logits held NaN or infinity (e.g. float16 overflow): its counts
    would be wrong, so the unit fails instead of storing them."""


@dataclass
class _Unit:
    """One unit of a forest: its prompt, parameters, own random stream and what it drew."""

    prompt: list[int]
    params: SamplingParams
    generator: Any
    processors: Any
    result: TreeSample
    leaves: Counter = field(default_factory=Counter)
    error: Exception | None = None


class TreeSampler:
    """Samples completions of one loaded model with the prefix tree, many units at once.

    ``eos_token_ids``: tokens that end a branch (the generation config's EOS ids);
    ``batch_size``: most rows per forward pass, or "auto" (halve on out-of-memory; each new
    call tries twice the size that last worked, up to 1024); ``memory_budget``: most bytes
    of KV cache one forward pass may hold, and of working tensors one chunk of the sampling
    step may hold (None: no limit but the device's); going over it is treated as
    out-of-memory, which is how the out-of-memory paths run on a CPU. ``float32_head``: the
    logits come from the sampler's float32 output layer (models below float32 with a plain
    head, see :class:`ingest.heads.Float32Head`). ``share_prompt``: the branches of a unit
    share one copy of its prompt's KV cache (plain attention layers; :mod:`ingest.prefix_cache`)
    instead of each holding its own; the counts are the same either way.
    """

    def __init__(
        self,
        model,
        tokenizer,
        eos_token_ids: Sequence[int],
        *,
        batch_size: int | str = "auto",
        memory_budget: int | None = None,
        share_prompt: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.auto_batch = batch_size == "auto"
        self.batch_size = AUTO_BATCH_START if self.auto_batch else int(batch_size)
        self.memory_budget = memory_budget
        self.share_prompt = share_prompt
        self.draw_rows: int | None = None  # rows per sampling chunk (None: a whole depth)
        self.cache_kwarg = cache_argument(model)
        self.keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self._piece_cache: dict[int, str] = {}
        self._new_cache()  # an unsupported cache type fails when the model loads, not mid-job
        self.head = Float32Head.for_model(model, self.eos_token_ids)
        self.float32_head = self.head is not None

    def sample(self, rendered: str, params: SamplingParams, seed: int) -> TreeSample:
        """Draw ``params.n`` completions of the rendered prompt; see the module docstring."""
        (result,) = self.sample_forest([(rendered, params, seed)])
        if isinstance(result, Exception):
            raise result
        return result

    def sample_forest(
        self, requests: Sequence[tuple[str, SamplingParams, int]]
    ) -> list[TreeSample | Exception]:
        """Sample several units in one tree pass (one forward pass per depth for all their
        branches), each from its own seeded generator. Returns each unit's result in order,
        or the error that failed it (:class:`NonFiniteLogits`) without failing the others."""
        import torch

        if not requests:
            return []
        with torch.inference_mode():
            units = [
                _Unit(
                    prompt=encode_prompt(self.tokenizer, rendered),
                    params=params,
                    generator=torch.Generator(device=self.model.device).manual_seed(seed),
                    processors=logits_processors(params),
                    result=TreeSample(counts={}, prompt_tokens=0),
                )
                for rendered, params, seed in requests
            ]
            if self.auto_batch:
                self.batch_size = min(AUTO_BATCH_START, self.batch_size * 2)
            if self.draw_rows is not None:
                self.draw_rows *= 2
            self._grow(units)
        return [unit.error or unit.result for unit in units]

    def _grow(self, units: list[_Unit]) -> None:
        import torch

        device = self.model.device
        for unit in units:
            unit.result.prompt_tokens = len(unit.prompt)
        batches, logits = self._prefill(units)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long)
        row_unit = torch.arange(len(units))  # each open branch's unit (sorted), on the CPU
        counts = torch.tensor([unit.params.n for unit in units])
        sequences = torch.zeros((len(units), 0), dtype=torch.long)  # new tokens (CPU)
        max_tokens = torch.tensor([unit.params.max_new_tokens for unit in units])

        for depth in range(1, int(max_tokens.max()) + 1):
            width = torch.bincount(row_unit, minlength=len(units)).tolist()
            uniforms = torch.cat([
                torch.rand(int(total), generator=units[u].generator, dtype=torch.float64,
                           device=device)
                for u, total in enumerate(
                    torch.zeros(len(units), dtype=torch.long).index_add_(0, row_unit, counts)
                    .tolist()
                ) if total
            ])
            bad_rows, entropies, cells = self._draw(logits, row_unit, units, sequences, counts,
                                                    uniforms)
            del logits, uniforms
            failed = self._fail_units(bad_rows, row_unit, units)
            self._record_entropy(entropies, counts, row_unit, units, width)
            parents, tokens, child_counts = cells.cpu()  # one copy to the host
            row_unit = row_unit[parents]
            sequences = torch.cat([sequences[parents], tokens[:, None]], dim=1)
            ended = torch.isin(tokens, eos) | (max_tokens[row_unit] == depth) | failed[parents]
            self._collect_leaves(units, row_unit, sequences, ended, child_counts, failed[parents])
            open_rows = (~ended).nonzero().squeeze(1)
            if len(open_rows) == 0:
                break
            row_unit, sequences = row_unit[open_rows], sequences[open_rows]
            counts = child_counts[open_rows]
            batches, logits = self._step(
                batches, parents[open_rows], tokens[open_rows], row_unit, depth, units
            )
        for unit in units:
            unit.result.counts = dict(unit.leaves)

    def _prefill(self, units: list[_Unit]):
        """All prompts left-padded to the longest (an attention mask and position ids keep
        each prompt as if alone; the padding stays in every branch's cache as masked
        positions), in passes of at most ``batch_size`` rows: a pass that runs out of memory
        (or whose cache is over ``memory_budget``) is split in two and retried (``auto``
        batch size). Prompts of one length need no mask at all."""
        import torch

        from ingest.prefix_cache import Batch, share_prompts

        device = self.model.device
        lengths = torch.tensor([len(unit.prompt) for unit in units])
        longest = int(lengths.max())
        ids = torch.zeros((len(units), longest), dtype=torch.long)
        mask = torch.zeros((len(units), longest), dtype=torch.long)
        for row, unit in enumerate(units):
            ids[row, longest - len(unit.prompt):] = torch.tensor(unit.prompt)
            mask[row, longest - len(unit.prompt):] = 1
        self._prompt_lengths = lengths.to(device)
        self._prompt_mask = mask.to(device) if bool((lengths < longest).any()) else None
        ids = ids.to(device)
        shared: dict = {}  # the prompts' KV per layer, shared by every pass's batch

        def prefill(batch: Batch):
            cache, rows = self._new_cache(), slice(batch.start, batch.start + batch.size)
            logits = self._forward(ids[rows], cache, **self._prompt_inputs(rows))
            self._check_prefill_budget(cache, batch.size)
            if self.share_prompt:
                share_prompts(cache, batch.start, len(units), shared)
            return Batch(batch.start, batch.size, cache), logits

        batches, logits = zip(*self._in_batches(len(units), prefill))
        for unit in units:
            unit.result.forward_calls += 1
        return list(batches), logits[0] if len(logits) == 1 else torch.cat(logits)

    def _in_batches(self, rows: int, run) -> list:
        """``run(batch)`` over rows [0, rows) in consecutive batches of at most
        ``batch_size`` rows, in order; its results. A batch that runs out of memory (or
        over ``memory_budget``) is split in two and retried (``auto`` batch size; a fixed
        size, or a single row, fails), once the failed pass's tensors are gone and the
        allocator's cache emptied. ``run`` may have gathered the batch's rows into
        ``batch.cache`` before it failed: the halves are views of them."""
        import torch

        from ingest.prefix_cache import Batch, split_batch

        results, pending, start, out_of_memory = [], [], 0, False
        while start < rows or pending:
            if not pending:
                size = min(self.batch_size, rows - start)
                pending.append(Batch(start, size, None))
                start += size
            batch = pending.pop(0)
            if out_of_memory:
                _empty_device_cache(self.model.device)
                out_of_memory = False
            try:
                results.append(run(batch))
            except torch.OutOfMemoryError:
                if not self.auto_batch or batch.size == 1:
                    raise
                self.batch_size = max(1, batch.size // 2)
                pending[:0] = split_batch(batch, self.batch_size)
                out_of_memory = True
        return results

    def _prompt_inputs(self, rows: slice) -> dict:
        """The prefill's attention mask and position ids for ``rows`` (none without
        padding), and ``logits_to_keep`` where the model takes it."""
        extra = {"logits_to_keep": 1} if self.keep_last_logits else {}
        if self._prompt_mask is not None:
            mask = self._prompt_mask[rows]
            extra |= {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
        return extra

    def _check_prefill_budget(self, cache, rows: int) -> None:
        """Out of memory if the prompts' KV cache is over the budget. On a device the pass
        itself runs out first; on a CPU this check after it is how the path runs."""
        import torch

        from ingest.prefix_cache import kv_bytes

        if self.memory_budget is not None and kv_bytes(cache) > self.memory_budget:
            raise torch.OutOfMemoryError(
                f"a prefill of {rows} rows needs more than the memory budget "
                f"({self.memory_budget} bytes of KV cache)"
            )

    def _draw(self, logits, row_unit, units: list[_Unit], sequences, counts, uniforms):
        """One depth's sampling step: each row's warped distribution, its entropy and the
        split of its count, in chunks of rows. Returns which rows' logits are not finite,
        each row's entropy (bits) and the nonzero cells ``(row, token, count)`` stacked, on
        the device, sorted by row then token.

        The step holds several rows x vocabulary tensors (warped logits, probabilities, two
        float64 cumulative sums): a chunk that runs out of memory (or over ``memory_budget``)
        is split in two and retried after its tensors are gone, and later depths and calls
        start from the chunk size that worked (each call tries twice it). The uniforms are
        drawn for the whole depth beforehand and every chunk takes its rows' slice, shifted
        by its rows' index among all (:func:`split_with_uniforms`): the counts do not depend
        on the chunking, bit for bit.
        """
        import torch

        device = logits.device
        n_rows = len(row_unit)
        uniform_start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
        counts_device = counts.to(device)
        chunk = min(self.draw_rows or n_rows, n_rows)
        pending = [(start, min(start + chunk, n_rows)) for start in range(0, n_rows, chunk)]
        parts, out_of_memory = [], False
        while pending:
            start, stop = pending.pop(0)
            if out_of_memory:
                _empty_device_cache(device)  # the failed chunk's tensors are gone by now
                out_of_memory = False
            try:
                self._check_draw_budget(stop - start, logits.shape[-1])
                parts.append(self._draw_rows(
                    logits[start:stop], row_unit[start:stop], units, sequences[start:stop],
                    counts_device[start:stop],
                    uniforms[uniform_start[start]:uniform_start[stop]], start,
                ))
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise
                self.draw_rows = (stop - start) // 2
                middle = start + self.draw_rows
                pending[:0] = [(start, middle), (middle, stop)]
                out_of_memory = True
        if len(parts) == 1:
            return parts[0]
        bad_rows, entropies, cells = zip(*parts)
        return torch.cat(bad_rows), torch.cat(entropies), torch.cat(cells, dim=1)

    def _draw_rows(self, logits, row_unit, units, sequences, counts, uniforms, first_row):
        """:meth:`_draw` for rows ``first_row...`` (``logits``' rows)."""
        import torch

        # NaN, +inf, or all -inf (no token possible): the row's unit fails
        bad_rows = (
            torch.isnan(logits).any(dim=-1)
            | torch.isposinf(logits).any(dim=-1)
            | torch.isneginf(logits).all(dim=-1)
        )
        probs = self._distributions(logits, row_unit, units, sequences)
        entropies = torch.special.entr(probs).sum(dim=-1, dtype=torch.float64) / math.log(2)
        rows, tokens, child_counts = split_with_uniforms(probs, counts, uniforms, first_row)
        return bad_rows, entropies, torch.stack([rows + first_row, tokens, child_counts])

    def _check_draw_budget(self, rows: int, vocab: int) -> None:
        """Out of memory if a sampling chunk's working tensors would pass the budget (about
        DRAW_BYTES_PER_CELL bytes per row and token at once)."""
        import torch

        if self.memory_budget is not None and rows * vocab * DRAW_BYTES_PER_CELL > (
            self.memory_budget
        ):
            raise torch.OutOfMemoryError(
                f"sampling {rows} rows needs more than the memory budget "
                f"({self.memory_budget} bytes)"
            )

    def _fail_units(self, bad_rows, row_unit, units: list[_Unit]):
        """Rows whose logits are not finite fail their whole unit; returns which rows belong
        to a failed unit (CPU booleans)."""
        import torch

        for u in row_unit[bad_rows.cpu()].unique().tolist():
            if units[u].error is None:
                units[u].error = NonFiniteLogits(
                    f"the model's next-token logits are not finite (NaN or infinity) in "
                    f"{self.dtype}, so its counts would be wrong; sample this model in a "
                    "wider dtype (float32, or bfloat16 on a GPU that supports it)"
                )
        failed_units = torch.tensor([unit.error is not None for unit in units])
        return failed_units[row_unit]

    def _distributions(self, logits, row_unit, units: list[_Unit], sequences):
        """Each row's next-token distribution under its unit's warpers (units with the same
        temperature, top-k and top-p are warped together), then softmax."""
        import torch

        logits = torch.nan_to_num(logits)  # failed units' rows: any finite values will do
        groups: dict[tuple, list[int]] = {}
        for u, unit in enumerate(units):
            p = unit.params
            groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(u)
        if len(groups) == 1:
            processors = units[0].processors
            return torch.softmax(processors(sequences, logits), dim=-1)
        probs = torch.empty_like(logits)
        for members in groups.values():
            rows = torch.isin(row_unit, torch.tensor(members)).nonzero().squeeze(1)
            if len(rows):
                rows = rows.to(logits.device)
                warped = units[members[0]].processors(sequences, logits[rows])
                probs[rows] = torch.softmax(warped, dim=-1)
        return probs

    def _record_entropy(self, entropies, counts, row_unit, units, width) -> None:
        """Per unit: the count-weighted entropy (bits) of the distributions its branches
        draw from at this depth (``entropies``: each row's, summed over the vocabulary in
        float64, no forward pass), and how many samples drew."""
        import torch

        device = entropies.device
        bits = torch.zeros(len(units), dtype=torch.float64, device=device).index_add_(
            0, row_unit.to(device), entropies * counts.to(device).double()
        ).tolist()
        tokens = torch.zeros(len(units), dtype=torch.long).index_add_(0, row_unit, counts)
        for u, unit in enumerate(units):
            if width[u]:
                unit.result.widths.append(width[u])
                unit.result.entropy_bits.append(bits[u])
                unit.result.entropy_tokens.append(int(tokens[u]))

    def _collect_leaves(self, units, row_unit, sequences, ended, child_counts, failed) -> None:
        """Branches that end here become completions of their unit (a failed unit's are
        dropped); stop strings end branches too (``ended`` is updated). Only the branches
        that end, or whose new token may complete a stop string, are decoded, all at once."""
        import torch

        check = ended & ~failed
        by_stop: dict[tuple[str, ...], list[int]] = {}
        for u, unit in enumerate(units):
            if unit.params.stop and unit.error is None:
                by_stop.setdefault(unit.params.stop, []).append(u)
        for stop, members in by_stop.items():
            rows = torch.isin(row_unit, torch.tensor(members))
            check[rows] |= self._may_complete_stop(sequences[rows, -1], stop)
        rows = check.nonzero().squeeze(1).tolist()
        if not rows:
            return
        eos = set(self.eos_token_ids)
        ids = [sequences[i].tolist() for i in rows]
        ids = [seq[:-1] if seq[-1] in eos else seq for seq in ids]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        owners, weights = row_unit[rows].tolist(), child_counts[rows].tolist()
        for i, text, u, weight in zip(rows, texts, owners, weights):
            stop = units[u].params.stop
            cut = min((pos for pos in (text.find(s) for s in stop) if pos >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                ended[i] = True
            if ended[i]:
                units[u].leaves[text] += weight

    def _may_complete_stop(self, new_tokens, stop: tuple[str, ...]):
        """Which branches' new token can end a stop string's first occurrence: only a token
        whose own text holds a stop string's last character, or part of a multi-byte
        character (decoded alone as U+FFFD), can; the others' texts need no decoding (the
        stop check costs the new tail, not the whole text, at every depth). A stop string
        ending in a space or tab checks every branch (tokenizers may drop a token's leading
        space when it is decoded alone)."""
        import torch

        last_chars = {s[-1] for s in stop}
        if any(c.isspace() and c not in "\r\n" for c in last_chars):
            return torch.ones(len(new_tokens), dtype=torch.bool)
        pieces = self._token_texts(new_tokens.tolist())
        return torch.tensor([
            "\ufffd" in piece or any(c in piece for c in last_chars) for piece in pieces
        ], dtype=torch.bool)

    def _token_texts(self, token_ids: list[int]) -> list[str]:
        """Each token decoded alone (cached for the sampler's life)."""
        missing = sorted(set(token_ids) - self._piece_cache.keys())
        if missing:
            decoded = self.tokenizer.batch_decode([[t] for t in missing],
                                                  skip_special_tokens=True)
            self._piece_cache.update(zip(missing, decoded))
        return [self._piece_cache[t] for t in token_ids]

    def _step(self, batches: list, parents, tokens, row_unit, depth: int, units):
        """One depth: run ``tokens`` on their parents' caches, in batches; return the new
        frontier's batches and its next-token logits (float32, one row per branch).

        Batches are gathered one at a time, just before their forward pass, and a parent
        batch is released as soon as no later batch needs its rows (rows are sorted by
        parent), so the parents' and the children's caches overlap by about one batch, not
        by a whole depth (docs/ingest.md, memory). A batch that runs out of memory (or over
        ``memory_budget``) is split in two and retried from its gathered rows (``auto``
        batch size); the forward pass extends a shallow copy of the gathered cache, so a
        failed pass leaves it intact.
        """
        import torch

        from ingest.prefix_cache import Batch, select_rows, shallow_copy

        device = self.model.device

        def step(batch: Batch):
            rows = slice(batch.start, batch.start + batch.size)
            if batch.cache is None:  # gathered here, inside the retry: the gather is a copy
                self._check_budget(batches, parents[rows])
                batch.cache = select_rows(batches, parents[rows])
                needed = int(parents[rows.stop]) if rows.stop < len(parents) else math.inf
                while batches and batches[0].start + batches[0].size <= needed:
                    del batches[0]  # the caller's list too: these parents are freed now
            cache = shallow_copy(batch.cache)  # extended by the pass; the gathered rows stay
            logits = self._forward(tokens[rows, None].to(device), cache,
                                   **self._decode_inputs(row_unit[rows], depth))
            return Batch(batch.start, batch.size, cache), logits

        new_batches, logits = zip(*self._in_batches(len(parents), step))
        calls = len(new_batches)
        rows = torch.bincount(row_unit, minlength=len(units)).tolist()
        for unit, unit_rows in zip(units, rows):
            if unit_rows:
                unit.result.forward_rows += unit_rows
                unit.result.forward_calls += calls
        return list(new_batches), torch.cat(logits)

    def _decode_inputs(self, row_unit, depth: int) -> dict:
        """Attention mask and position ids of one new token per row, when prompts were
        padded (without padding the cache's length gives the positions)."""
        import torch

        if self._prompt_mask is None:
            return {}
        device = self._prompt_mask.device
        row_unit = row_unit.to(device)
        mask = torch.cat(
            [self._prompt_mask[row_unit],
             torch.ones((len(row_unit), depth), dtype=torch.long, device=device)], dim=1
        )
        positions = (self._prompt_lengths[row_unit] + depth - 1)[:, None]
        return {"attention_mask": mask, "position_ids": positions}

    def _check_budget(self, batches: list, rows) -> None:
        """Out of memory if the KV cache of ``rows`` gathered from ``batches``, one token
        longer, would pass the budget (checked before the gather, which is itself a copy);
        a shared prompt prefix, held already, does not count, its transient dense copy for
        one layer's attention does (:func:`ingest.prefix_cache.step_bytes_per_row`)."""
        import torch

        from ingest.prefix_cache import step_bytes_per_row

        if self.memory_budget is None:
            return
        if len(rows) * step_bytes_per_row(batches[0].cache) > self.memory_budget:
            raise torch.OutOfMemoryError(
                f"a batch of {len(rows)} rows needs more than the memory budget "
                f"({self.memory_budget} bytes of KV cache)"
            )

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
        """The next-token logits (float32) of the last position of every row."""
        if not self.float32_head:
            output = self.model(
                input_ids=input_ids, use_cache=True, **{self.cache_kwarg: cache}, **extra
            )
            return output.logits[:, -1].float()
        extra.pop("logits_to_keep", None)
        base = self.model.base_model
        output = base(input_ids=input_ids, use_cache=True, **{cache_argument(base): cache},
                      **extra)
        return self.head(output.last_hidden_state[:, -1])


def _empty_device_cache(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
