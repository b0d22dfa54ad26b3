"""Sampling conditions: what a user chose that changes the answer distribution.

A run's *condition* is its mode (sampled or exact), temperature, top_p, top_k,
max_new_tokens, the user's own stop strings and the base-stage scaffold. The number of
samples and the seed are not part of it (more samples or another seed are more samples of
the same experiment), and neither is the protocol the catalog applies per stage by itself
(the chat template for chat stages, the newline stop for plain stages): the base and the
SFT runs of one study share a condition. See docs/metrics.md, section 11.

Runs of one condition are pooled; runs of different conditions never are. Every run stores
its condition as readable JSON (``runs.condition``) and as a short key
(``runs.condition_key``) that the views and the analysis group by.

Counts imported without condition columns belong to the condition ``{"imported": true}``:
nothing is known about how they were sampled, so they pool only with each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from catalog.enums import RUN_MODES
from catalog.errors import InvalidInput

KEY_LENGTH = 16
# The fields that the views expose as columns, in this order.
CONDITION_COLUMNS = ("temperature", "top_p", "top_k", "max_new_tokens", "condition_key")


@dataclass(frozen=True)
class Condition:
    """One sampling condition. ``None`` means "not applicable" (exact mode has no
    temperature) or "not known" (imported counts that did not say)."""

    mode: str = "sampled"
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    scaffold: str | None = None
    imported: bool = False
    # The numeric precision the model ran in, when below float32 (bfloat16, float16): set
    # by the worker when it stores the run, so runs of different precision never pool. Left
    # out of the JSON when None, so float32 runs keep the keys they always had.
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in RUN_MODES:
            raise InvalidInput(f"mode {self.mode!r} is not one of {', '.join(RUN_MODES)}")
        # top_k 0 means "off", like None: one condition, not two.
        if self.top_k == 0:
            object.__setattr__(self, "top_k", None)
        object.__setattr__(self, "stop", tuple(self.stop))
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    @classmethod
    def sampled(
        cls, *, temperature: float, top_p: float, top_k: int | None, max_new_tokens: int,
        stop: Sequence[str] = (), scaffold: str | None = None,
    ) -> Condition:
        return cls("sampled", temperature, top_p, top_k, max_new_tokens, tuple(stop), scaffold)

    @classmethod
    def exact(cls, *, scaffold: str | None = None) -> Condition:
        return cls("exact", scaffold=scaffold)

    @classmethod
    def unknown_import(cls) -> Condition:
        """Imported counts that carry no condition columns."""
        return cls("sampled", imported=True)

    def to_dict(self) -> dict[str, Any]:
        """The readable JSON stored in ``runs.condition``."""
        if self.imported:
            return {"mode": self.mode, "imported": True}
        return {
            "mode": self.mode,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
            "scaffold": self.scaffold,
        } | ({"dtype": self.dtype} if self.dtype else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        if data.get("imported"):
            return cls(data.get("mode", "sampled"), imported=True)
        return cls(
            mode=data.get("mode", "sampled"),
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            top_k=data.get("top_k"),
            max_new_tokens=data.get("max_new_tokens"),
            stop=tuple(data.get("stop") or ()),
            scaffold=data.get("scaffold"),
            dtype=data.get("dtype"),
        )

    @property
    def key(self) -> str:
        """A short stable hash of :meth:`to_dict` (the ``condition_key`` column)."""
        return condition_key(self.to_dict())

    def label(self) -> str:
        """A one-line description for tables and figure titles."""
        if self.imported:
            return "imported (condition unknown)"
        if self.mode == "exact":
            parts = ["exact"]
        else:
            parts = [f"T={self.temperature:g}" if self.temperature is not None else "T=?"]
            if self.top_p is not None and self.top_p < 1:
                parts.append(f"top_p={self.top_p:g}")
            if self.top_k is not None:
                parts.append(f"top_k={self.top_k}")
            if self.max_new_tokens is not None:
                parts.append(f"{self.max_new_tokens} tokens")
            if self.stop:
                parts.append("stop=" + ",".join(repr(s) for s in self.stop))
        if self.scaffold:
            parts.append(f"scaffold {self.scaffold}")
        if self.dtype:
            parts.append(self.dtype)
        return ", ".join(parts)

    def in_precision(self, dtype: str | None) -> Condition:
        """This condition as run in ``dtype``: float32 (and an unknown dtype) changes nothing,
        a narrower precision becomes part of the condition and so of its key."""
        if self.imported or dtype in (None, "float32"):
            return self
        return replace(self, dtype=dtype)


def condition_key(condition: Mapping[str, Any]) -> str:
    """The ``condition_key`` of a condition's JSON: the first 16 hex digits of the SHA-256 of
    its canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(dict(condition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:KEY_LENGTH]
