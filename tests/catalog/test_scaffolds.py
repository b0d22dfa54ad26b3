"""Base-stage scaffolds (catalog/prompting.py) and the task file's ``scaffold`` field."""

from __future__ import annotations

import pytest

from catalog.errors import InvalidInput
from catalog.normalize import normalize
from catalog.prompting import DEFAULT_SCAFFOLD, SCAFFOLDS, get_scaffold, render_plain
from catalog.tasks import bundled_task, bundled_tasks, parse_task_text, spec_from_dict

TASK = """
name = "pick"
kind = "closed"
options = ["a", "b"]
normalizer = "choice"
{scaffold}
[[prompts]]
key = "p"
text = "Pick a or b."
"""


def test_scaffolds_are_named_and_versioned():
    assert get_scaffold().id == DEFAULT_SCAFFOLD == "qa@1"
    assert get_scaffold("fewshot").id == get_scaffold("fewshot@1").id == "fewshot@1"
    assert render_plain("Pick a digit.") == "Question: Pick a digit.\nAnswer:"
    fewshot = render_plain("Pick a digit.", "fewshot")
    assert fewshot.endswith("\n\nQuestion: Pick a digit.\nAnswer:")
    assert fewshot.count("Question:") == 4 and fewshot.count("Answer:") == 4
    assert len({s.id for s in SCAFFOLDS}) == len(SCAFFOLDS)
    with pytest.raises(InvalidInput, match="unknown scaffold 'chat'; the scaffolds are: qa@1"):
        get_scaffold("chat")
    with pytest.raises(InvalidInput, match="unknown scaffold 'qa@9'"):
        get_scaffold("qa@9")


def test_few_shot_answers_name_no_option_of_a_bundled_task():
    """The examples show the answer format without priming any task's answer."""
    examples = [line.removeprefix("Answer: ") for line in render_plain("", "fewshot").splitlines()
                if line.startswith("Answer: ")]
    assert len(examples) == 3
    for task in bundled_tasks():
        if task.kind == "closed":
            assert all(normalize(task, example) is None for example in examples), task.name
        forms = {f.casefold() for fs in task.surface_forms().values() for f in fs}
        assert not forms & {e.casefold() for e in examples}, task.name


def test_a_task_file_may_choose_a_scaffold():
    assert parse_task_text(TASK.format(scaffold="")).scaffold is None
    spec = parse_task_text(TASK.format(scaffold='scaffold = "fewshot"'))
    assert spec.scaffold == "fewshot@1" and spec.to_dict()["scaffold"] == "fewshot@1"
    assert spec_from_dict(spec.to_dict()).scaffold == "fewshot@1"
    with pytest.raises(InvalidInput, match="pick.toml: scaffold: .*unknown scaffold 'odd'"):
        parse_task_text(TASK.format(scaffold='scaffold = "odd"'), source="pick.toml")
    with pytest.raises(InvalidInput, match="pick.toml: scaffold: must be a string"):
        parse_task_text(TASK.format(scaffold="scaffold = 3"), source="pick.toml")
    assert bundled_task("coin").scaffold is None
