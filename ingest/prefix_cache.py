"""The tree sampler's KV caches: batches of frontier rows, gathered, split and measured, and
one copy of each unit's prompt KV shared by all its branches.

Every open branch ("row") of a depth needs its prompt's keys and values for attention, but
the prompt is the same for all branches of a unit. A plain ``DynamicLayer`` would hold it
once per row (rows x (P + S) positions, P the prompt's, S the generated ones);
:class:`SharedPrefixLayer` holds the prefill's keys and values once per unit (``prefix``,
units x P, never copied per row), each row's unit index and the row's own generated
positions (``suffix``, rows x S). Attention still needs one dense tensor per row: the
layer's ``update`` builds it (prefix rows gathered, suffix appended) for that layer's
attention only, so it is transient; what stays between depths is units x P + rows x S.

Only layers that are exactly ``DynamicLayer`` are shared (:func:`share_prompts`); other
layer types (sliding window, ...) keep a per-row copy of everything, as before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


@dataclass
class Batch:
    """Consecutive frontier rows [start, start + size) and the KV cache holding them."""

    start: int
    size: int
    cache: Any


class SharedPrefixLayer(DynamicLayer):
    """A ``DynamicLayer`` whose prompt positions are shared by rows of the same unit.

    ``prefix_keys`` / ``prefix_values``: [units, kv_heads, P, head_dim], shared by every batch
    of the forest; ``row_unit``: [rows], each row's index into them (on their device);
    ``keys`` / ``values``: [rows, kv_heads, S, head_dim], the generated positions. Masks and
    positions see P + S positions per row, as with a plain layer.
    """

    def __init__(self, prefix_keys, prefix_values, row_unit, keys, values):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.row_unit = row_unit
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self._dense(self.prefix_keys, self.keys), self._dense(self.prefix_values,
                                                                     self.values)

    def _dense(self, prefix, suffix):
        """Each row's prefix then its suffix, as one contiguous tensor (the same values, and
        layout, as a plain layer's cache)."""
        rows, heads, length, dim = suffix.shape
        prompt = prefix.shape[-2]
        dense = suffix.new_empty((rows, heads, prompt + length, dim))
        torch.index_select(prefix, 0, self.row_unit, out=dense[:, :, :prompt])
        dense[:, :, prompt:] = suffix
        return dense

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.keys.shape[-2]

    # get_mask_sizes is DynamicLayer's: get_seq_length() + query length, offset 0

    def batch_select_indices(self, indices) -> None:
        for name in ROW_TENSORS:
            setattr(self, name, getattr(self, name)[indices.to(self.device)])

    def reorder_cache(self, beam_idx) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for name in ROW_TENSORS:
            setattr(self, name, getattr(self, name).repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0 or -tokens_to_remove > self.keys.shape[-2]:
            raise ValueError("a shared prompt's positions cannot be cropped")
        super().crop(tokens_to_remove)


ROW_TENSORS = ("keys", "values", "row_unit")


def share_prompts(cache, first: int, units: int, shared: dict) -> None:
    """Turn the plain ``DynamicLayer`` layers of a prefill pass's ``cache`` (rows ``first``...
    of a forest of ``units`` prompts) into :class:`SharedPrefixLayer` layers.

    ``shared`` maps a layer index to its prefix tensors for all units, one pair for all the
    prefill's passes (allocated by the first, each pass copies its rows in), so that batches
    gathered from several passes share them. A single pass's own tensors are the prefix.
    """
    for index, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer or layer.keys is None or not layer.keys.numel():
            continue
        keys, values = layer.keys, layer.values
        rows = keys.shape[0]
        if rows == units:
            shared[index] = (keys, values)
        elif index not in shared:
            shared[index] = (keys.new_empty((units, *keys.shape[1:])),
                             values.new_empty((units, *values.shape[1:])))
        prefix_keys, prefix_values = shared[index]
        if prefix_keys is not keys:
            prefix_keys[first:first + rows] = keys
            prefix_values[first:first + rows] = values
        cache.layers[index] = SharedPrefixLayer(
            prefix_keys, prefix_values, torch.arange(first, first + rows, device=keys.device),
            keys.new_empty((rows, keys.shape[1], 0, keys.shape[3])),
            values.new_empty((rows, values.shape[1], 0, values.shape[3])),
        )


def row_tensors(layer) -> tuple[str, ...]:
    """The names of ``layer``'s tensors with one entry per row (none: an empty layer)."""
    if isinstance(layer, SharedPrefixLayer):
        return ROW_TENSORS
    keys = getattr(layer, "keys", None)
    return ("keys", "values") if keys is not None and keys.numel() else ()


def kv_bytes(*caches) -> int:
    """Bytes the keys and values of ``caches`` hold, each tensor once (a shared prompt
    prefix counts once however many caches use it; a broadcast view counts as its rows)."""
    seen, total = set(), 0
    for cache in caches:
        for layer in cache.layers:
            names = [n for n in row_tensors(layer) if n != "row_unit"]
            if isinstance(layer, SharedPrefixLayer):
                names += ["prefix_keys", "prefix_values"]
            for name in names:
                tensor = getattr(layer, name)
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


def step_bytes_per_row(cache) -> int:
    """Bytes one row of ``cache`` holds after a forward pass of one more token: its own keys
    and values one position longer (the generated positions only, where the prompt is
    shared) and the dense keys and values one shared layer builds for its attention (the
    largest; transient, one layer at a time)."""
    stored = dense = 0
    for layer in cache.layers:
        if not row_tensors(layer):
            continue
        per_position = sum(t.shape[1] * t.shape[3] * t.element_size()
                           for t in (layer.keys, layer.values))
        stored += (layer.keys.shape[-2] + 1) * per_position
        if isinstance(layer, SharedPrefixLayer):
            dense = max(dense, (layer.get_seq_length() + 1) * per_position)
    return stored + dense


def shallow_copy(cache):
    """A cache with its own layer objects over the same tensors: a forward pass replaces the
    copy's tensors (torch.cat) and leaves the original's intact."""
    clone = copy.copy(cache)
    clone.layers = [copy.copy(layer) for layer in cache.layers]
    return clone


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """``batch`` as batches of at most ``size`` rows, over views of its tensors (no copy);
    a batch not gathered yet splits into row ranges still to gather."""
    if batch.cache is None:
        return [Batch(batch.start + start, min(size, batch.size - start), None)
                for start in range(0, batch.size, size)]
    parts = []
    for start in range(0, batch.size, size):
        part = shallow_copy(batch.cache)
        for layer in part.layers:
            for name in row_tensors(layer):
                setattr(layer, name, getattr(layer, name)[start:start + size])
        parts.append(Batch(batch.start + start, min(size, batch.size - start), part))
    return parts


def select_rows(batches: list[Batch], rows) -> Any:
    """A new KV cache holding the frontier ``rows`` (sorted), gathered from ``batches``.

    The new cache shares no layer objects with its sources: the forward pass that extends it
    replaces its tensors (torch.cat) rather than writing into them, so the parents stay intact
    for their other children, and a failed (out-of-memory) batch can simply be retried. When
    the rows are exactly one source batch, in order, its tensors are reused without a copy.
    A shared prompt prefix is never copied: only the rows' own positions and unit indices.
    """
    parts = []
    for batch in batches:
        mask = (rows >= batch.start) & (rows < batch.start + batch.size)
        if mask.any():
            parts.append((batch.cache, rows[mask] - batch.start))
    template = parts[0][0]
    cache = shallow_copy(template)
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
        for name in row_tensors(layer):
            tensor = getattr(layer, name)
            if single_parent:
                row = int(parts[0][1][0])
                setattr(layer, name, tensor[row : row + 1].expand(len(rows), *tensor.shape[1:]))
                continue
            pieces = [
                getattr(source.layers[index], name).index_select(0, local.to(tensor.device))
                for source, local in parts
            ]
            setattr(layer, name, pieces[0] if len(pieces) == 1 else torch.cat(pieces))
    return cache
