"""Values as the JSON contract and people read them, shared by every result module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from catalog.conditions import Condition


def json_number(value: Any) -> float | None:
    """A JSON-safe number: NaN and infinities become None, NumPy scalars Python floats."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def condition_label(condition: Mapping[str, Any]) -> str:
    """The condition in one line (``T=0.7, 24 tokens``; ``imported (condition unknown)``)."""
    return Condition.from_dict(condition).label()
