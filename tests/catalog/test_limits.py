"""The limits of what the store holds come from the schema, the stricter database's."""

from __future__ import annotations

import pytest

from catalog import limits
from catalog.errors import InvalidInput


def test_integer_columns_hold_what_postgresql_holds():
    assert limits.integer_max("runs.n_samples") == 2**31 - 1  # Integer
    assert limits.integer_max("runs.top_k") == 2**31 - 1
    assert limits.integer_max("runs.seed") == 2**63 - 1  # BigInteger
    assert limits.integer_max("option_counts.count") == 2**63 - 1
    with pytest.raises(TypeError):
        limits.integer_max("models.name")


def test_text_columns_hold_their_length():
    assert limits.text_max("models.name") == 200
    assert limits.text_max("models.stage") == 100
    assert limits.text_max("option_counts.option") == 500
    assert limits.text_max("models.notes") is None  # Text: unbounded


@pytest.mark.parametrize("value, problem", [
    (2**31, "at most 2,147,483,647"), (-1, "must be >= 0"), (-(2**40), "must be >= 0"),
])
def test_check_integer(value, problem):
    with pytest.raises(InvalidInput, match=problem):
        limits.check_integer(value, "runs.n_samples", "samples", least=0)
    assert limits.check_integer(2**31 - 1, "runs.n_samples", "samples", least=0) == 2**31 - 1


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_check_float_refuses_what_is_not_finite(value):
    with pytest.raises(InvalidInput, match="finite"):
        limits.check_float(value, "temperature", above=0)


@pytest.mark.parametrize("name, problem", [
    ("", "empty"), ("  ", "empty"), ("a\nb", "control character"), ("a\u200bb", "control"),
    (" a", "starts or ends with a space"), ("x" * 201, "at most 200 fit"),
])
def test_check_name(name, problem):
    with pytest.raises(InvalidInput, match=problem):
        limits.check_name(name, "models.name", "model name")


def test_shown_cuts_a_long_value():
    assert limits.shown("x" * 10) == repr("x" * 10)
    cut = limits.shown("x" * 1_000_000)
    assert len(cut) < 100 and cut.endswith("(1,000,000 characters)")
