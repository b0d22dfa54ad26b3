"""What the store can hold, read from the schema, and the checks of what users type.

SQLite stores any integer up to 2**63 - 1 in any column and any text in a VARCHAR, while
PostgreSQL refuses an ``Integer`` above 2**31 - 1 or a ``String(200)`` of 201 characters. A
value is checked here against the stricter of the two, so both databases accept the same
inputs: integers against their column's type (``Integer``: 32 bits, ``BigInteger``: 64),
texts against their column's length, floats for being finite. The CLI's option types
(:mod:`catalog.cli.types`) and the imports (:mod:`catalog.records`) use these checks, one
definition each.
"""

from __future__ import annotations

import math
import unicodedata

from sqlalchemy import BigInteger, Column, Integer, String

from catalog.errors import InvalidInput
from catalog.schema import Base

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Characters shown of a bad value in a message: a 60 MB cell is not echoed whole.
SHOWN_CHARACTERS = 60


def column(name: str) -> Column:
    """A schema column by ``table.column`` (e.g. ``runs.n_samples``)."""
    table, _, col = name.partition(".")
    return Base.metadata.tables[table].columns[col]


def integer_max(name: str) -> int:
    """The largest integer the column holds on both databases."""
    kind = column(name).type
    if isinstance(kind, BigInteger):
        return INT64_MAX
    if isinstance(kind, Integer):
        return INT32_MAX
    raise TypeError(f"{name} is not an integer column")


def text_max(name: str) -> int | None:
    """The longest text the column holds on PostgreSQL (None: unbounded)."""
    kind = column(name).type
    return kind.length if isinstance(kind, String) else None


def shown(value: object) -> str:
    """A value for a message: its repr, cut to a few dozen characters."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}... ({len(str(value)):,} characters)"


def check_integer(value: int, name: str, what: str, *, least: int | None = None) -> int:
    """``value`` if it is >= ``least`` and fits column ``name`` on both databases."""
    top = integer_max(name)
    if least is not None and value < least:
        raise InvalidInput(f"{what} must be >= {least}, got {shown(value)}")
    if value > top or value < -top - 1:
        raise InvalidInput(f"{what} must be at most {top:,} (what the store holds), got "
                           f"{shown(value)}")
    return value


def check_float(value: float, what: str, *, above: float | None = None,
                at_least: float | None = None, at_most: float | None = None) -> float:
    """``value`` if it is a finite number within the given bounds."""
    if not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {value!r}")
    if above is not None and not value > above:
        raise InvalidInput(f"{what} must be > {above:g}, got {value!r}")
    if at_least is not None and value < at_least:
        raise InvalidInput(f"{what} must be >= {at_least:g}, got {value!r}")
    if at_most is not None and value > at_most:
        raise InvalidInput(f"{what} must be <= {at_most:g}, got {value!r}")
    return value


def check_text(value: str, name: str, what: str) -> str:
    """``value`` if it fits column ``name`` on both databases (SQLite does not check)."""
    longest = text_max(name)
    if longest is not None and len(value) > longest:
        raise InvalidInput(f"{what} is {len(value):,} characters long; at most {longest} fit")
    return value


def check_name(value: str, name: str, what: str) -> str:
    """A name (of a model, family, stage, task...): one printable line, not blank, that fits
    its column. Names are printed in tables and typed again in commands."""
    if not value.strip():
        raise InvalidInput(f"{what} is empty; give a name")
    bad = next((c for c in value if unicodedata.category(c).startswith("C")), None)
    if bad is not None:
        raise InvalidInput(f"{what} {shown(value)} holds a control character ({bad!r}); "
                           "use one printable line")
    if value != value.strip():
        raise InvalidInput(f"{what} {shown(value)} starts or ends with a space")
    return check_text(value, name, what)
