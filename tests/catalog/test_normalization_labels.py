"""The normalizers against completions of real models coded by hand (tests/data/normalization,
docs/normalization.md): agreement overall and per task, and how much of what they count
valid carries the coded answer, on the items the rules were tuned on (``dev`` and
``holdout``, 630) and on three sets coded afterwards by other coders, each scored once with
the rules frozen before later changes (``second``, 300; ``third``, 360, from prompts never
sampled for the earlier sets; ``fourth``, ``fifth`` and ``sixth``, 600 each, newly sampled).
The sixth set is the blind measure of version 4: no rule was changed after it was scored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "data" / "normalization"))
from agreement import agreement, load  # noqa: E402

from catalog.tasks import bundled_tasks  # noqa: E402

ITEMS = load()
# The rules were tuned on dev and holdout together: one set here.
TUNED = "tuned"
for _item in ITEMS:
    _item["split"] = TUNED if _item["split"] in ("dev", "holdout") else _item["split"]
STRICT = agreement(ITEMS)
# What the lenient (pre-v2) reading reaches on the same labels, for comparison.
LENIENT = agreement(ITEMS, lenient=True)
# Floors at what was reached (README in tests/data/normalization). The goal is 90% for both
# measures, overall and per task: reached on the tuned set (96% outcome, 91% of the counted
# carry the coded answer); on the second set 94% and 87%, the third 93% and 87%, the fourth
# 96% and 90%, the fifth 93% and 84% (blind, each before the changes its misses led to:
# 89%/67%, 91%/80%, 95%/86%, 91%/75%); the sixth, never tuned on, 92% and 82%: not the goal.
LATER_SETS = ("second", "third", "fourth", "fifth", "sixth")
OUTCOME_FLOOR = {TUNED: 0.90, "second": 0.90, "third": 0.90, "fourth": 0.93, "fifth": 0.90,
                 "sixth": 0.90}
VALID_CORRECT_FLOOR = {TUNED: 0.89, "second": 0.80, "third": 0.80, "fourth": 0.85,
                       "fifth": 0.80, "sixth": 0.78}


def test_the_labelled_set_covers_every_bundled_task_and_both_models():
    assert len(ITEMS) >= 900
    for split in (TUNED, *LATER_SETS):
        items = [i for i in ITEMS if i["split"] == split]
        assert {i["task"] for i in items} == {t.name for t in bundled_tasks()}
        assert {i["model"] for i in items} == {"smollm2-135m-instruct", "gemma-3-270m-base"}
    assert sum(i["split"] == "second" for i in ITEMS) >= 300
    assert sum(i["split"] == "third" for i in ITEMS) >= 360
    assert sum(i["split"] == "fourth" for i in ITEMS) >= 600
    assert sum(i["split"] == "fifth" for i in ITEMS) >= 600
    assert sum(i["split"] == "sixth" for i in ITEMS) >= 600


@pytest.mark.parametrize("split", [TUNED, *LATER_SETS])
def test_overall_agreement(split):
    overall = STRICT[split]["all"]
    assert overall["outcome"] >= OUTCOME_FLOOR[split], overall
    assert overall["valid_correct"] >= VALID_CORRECT_FLOOR[split], overall
    lenient = LENIENT[split]["all"]
    assert overall["outcome"] > lenient["outcome"] + 0.1
    assert overall["valid_correct"] > lenient["valid_correct"] + 0.25


@pytest.mark.parametrize("task", sorted(t.name for t in bundled_tasks()))
def test_agreement_per_task(task):
    assert STRICT[TUNED][task]["outcome"] >= 0.88, STRICT[TUNED][task]
    floor = 0.70 if task == "first_name" else 0.78
    for split in LATER_SETS:
        assert STRICT[split][task]["outcome"] >= floor, (split, STRICT[split][task])


# Per task the tuned set holds 42 items, the later sets 20, 24 and 40: one miss is 2, 5, 4 or
# 2.5 points. The lowest reached: 90% (tuned); 80% on the second set (us_state), 75% on the
# third for first_name (made-up names the coders read as names or not) and 83% for animal;
# 85% on the fourth (first_name); 80% on the fifth (animal, first_name) and the sixth
# (first_name; digit 82%).


def test_a_second_coding_of_tuned_items_agrees_with_the_first():
    """The labels are reproducible: 90 items coded again by other coders (recoded.jsonl)."""
    first = {item["id"]: item["label"] for item in ITEMS}
    again = load(Path(__file__).parents[1] / "data" / "normalization" / "recoded.jsonl")
    assert len(again) == 90

    def outcome(label):
        return None if label in ("no_answer", "ambiguous", "off_category", "out_of_range") else label

    same = sum(outcome(item["label"]) == outcome(first[item["id"]]) for item in again)
    assert same / len(again) >= 0.95


def test_the_fifth_sets_counted_items_coded_twice_mostly_agree():
    """The counted-valid items of the fifth set (as version 4 read it when scored blind), coded
    again by other coders (recoded-fifth.jsonl): the misses there are the rules', not a coding
    artefact."""
    first = {item["id"]: item["label"] for item in ITEMS}
    again = load(Path(__file__).parents[1] / "data" / "normalization" / "recoded-fifth.jsonl")
    assert len(again) == 102
    reasons = ("no_answer", "ambiguous", "off_category", "out_of_range")

    def outcome(label):
        return None if label in reasons else label

    same = sum(outcome(item["label"]) == outcome(first[item["id"]]) for item in again)
    assert same / len(again) >= 0.93  # 97 of 102
