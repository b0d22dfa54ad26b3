"""The normalizers against completions of real models coded by hand (tests/data/normalization,
docs/normalization.md): agreement overall and per task, and how much of what they count
valid carries the coded answer, on the split the rules were tuned on (dev) and on the split
coded by others and never read while writing rules (holdout)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "data" / "normalization"))
from agreement import agreement, load  # noqa: E402

from catalog.tasks import bundled_tasks  # noqa: E402

ITEMS = load()
STRICT = agreement(ITEMS)
# What the lenient (pre-v2) reading reaches on the same labels, for comparison.
LENIENT = agreement(ITEMS, lenient=True)
# Outcome agreement: the goal is reached overall on both splits. Of the completions counted
# valid, 86% (dev) and 76% (holdout) carry the coded answer (the goal is 90%; the lenient
# reading: 45%): these floors keep what was reached (README in tests/data/normalization).
GOAL = 0.90
VALID_CORRECT_FLOOR = {"dev": 0.85, "holdout": 0.75}


def test_the_labelled_set_covers_every_bundled_task_and_both_models():
    assert len(ITEMS) >= 600
    assert {i["task"] for i in ITEMS} == {t.name for t in bundled_tasks()}
    assert {i["model"] for i in ITEMS} == {"smollm2-135m-instruct", "gemma-3-270m-base"}
    assert sum(i["split"] == "dev" for i in ITEMS) >= 400


@pytest.mark.parametrize("split", ["dev", "holdout"])
def test_overall_agreement_reaches_the_goal(split):
    overall = STRICT[split]["all"]
    assert overall["outcome"] >= GOAL, overall
    assert overall["valid_correct"] >= VALID_CORRECT_FLOOR[split], overall
    lenient = LENIENT[split]["all"]
    assert overall["outcome"] > lenient["outcome"] + 0.1
    assert overall["valid_correct"] > lenient["valid_correct"] + 0.25


@pytest.mark.parametrize("task", sorted(t.name for t in bundled_tasks()))
def test_agreement_per_task(task):
    for split in ("dev", "holdout"):
        assert STRICT[split][task]["outcome"] >= PER_TASK_FLOOR, (split, STRICT[split][task])


# Per task a split holds 28 (dev) or 14 (holdout) items: one miss is 4 or 7 points. The
# lowest per-task agreement reached is 86% (dev) and 79% (holdout).
PER_TASK_FLOOR = 0.78
