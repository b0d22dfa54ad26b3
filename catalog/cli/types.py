"""click parameter types built from :mod:`catalog.limits`: a number the store cannot hold is
a usage error (exit 2) at the edge, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import click

from catalog import limits
from catalog.errors import InvalidInput


class StoredInt(click.ParamType):
    """An integer >= ``least`` that fits the schema column ``column`` (``runs.seed``...)."""

    name = "integer"

    def __init__(self, column: str, least: int | None = None) -> None:
        self.column, self.least = column, least

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{limits.shown(value)} is not a whole number", param, ctx)
        try:
            return limits.check_integer(number, self.column, "the value", least=self.least)
        except InvalidInput as exc:
            self.fail(str(exc).removeprefix("the value "), param, ctx)


class FiniteFloat(click.ParamType):
    """A finite float, optionally ``> above``, ``>= at_least``, ``<= at_most``."""

    name = "number"

    def __init__(self, above: float | None = None, at_least: float | None = None,
                 at_most: float | None = None) -> None:
        self.bounds = {"above": above, "at_least": at_least, "at_most": at_most}

    def convert(self, value, param, ctx):
        return finite(value, param, ctx, self, **self.bounds)


def finite(value, param, ctx, kind: click.ParamType | None = None, **bounds) -> float:
    """``value`` as a finite float within ``bounds`` (see :func:`limits.check_float`)."""
    fail = (kind or click.FLOAT).fail
    try:
        number = float(str(value).strip()) if not isinstance(value, float) else value
    except ValueError:
        fail(f"{limits.shown(value)} is not a number", param, ctx)
    try:
        return limits.check_float(number, "the value", **bounds)
    except InvalidInput as exc:
        fail(str(exc).removeprefix("the value "), param, ctx)


class Name(click.ParamType):
    """A name that fits schema column ``column``: one printable line, not blank."""

    name = "name"

    def __init__(self, column: str) -> None:
        self.column = column

    def convert(self, value, param, ctx):
        try:
            return limits.check_name(str(value), self.column, "the name")
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)


# Run columns, one type each, for every command that takes them.
SAMPLES = StoredInt("runs.n_samples", least=1)
SEED = StoredInt("runs.seed", least=0)
TOP_K = StoredInt("runs.top_k", least=0)
MAX_NEW_TOKENS = StoredInt("runs.max_new_tokens", least=1)
STAGE_ORDER = StoredInt("models.stage_order", least=0)
STEP = StoredInt("models.step", least=0)
TEMPERATURE = FiniteFloat(above=0)
TOP_P = FiniteFloat(above=0, at_most=1)
PROBABILITY = FiniteFloat(at_least=0, at_most=1)
POSITIVE = FiniteFloat(above=0)
NON_NEGATIVE = FiniteFloat(at_least=0)
COUNT = StoredInt("option_counts.count", least=0)
