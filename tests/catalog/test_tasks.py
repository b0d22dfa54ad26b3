"""Task files: the bundled suite, parsing, validation and the dict round trip."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import resources

import pytest

from catalog.errors import InvalidInput, NotFound
from catalog.normalize import NORMALIZERS
from catalog.tasks import (
    PromptSpec,
    bundled_task,
    bundled_tasks,
    load_task_file,
    parse_task_text,
    spec_from_dict,
)

SUITE = (
    "digit number_1_10 number_1_100 coin die letter rps color suit weekday month us_state "
    "animal fruit first_name"
).split()
BASIC_COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray"]


# --- the bundled suite -------------------------------------------------------------------


def test_suite_has_the_fifteen_tasks_sorted_by_name():
    names = [task.name for task in bundled_tasks()]
    assert set(SUITE) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", SUITE)
def test_bundled_task_has_ten_distinct_prompts_and_a_known_normalizer(name):
    task = bundled_task(name)
    keys = [p.key for p in task.prompts]
    texts = [p.text for p in task.prompts]
    assert len(task.prompts) >= 10
    assert len(set(keys)) == len(keys)
    assert len(set(texts)) == len(texts)
    assert task.normalizer in NORMALIZERS
    assert task.description
    assert (task.kind == "closed") == bool(task.options)


def test_bundled_file_names_match_task_names():
    folder = resources.files("catalog").joinpath("tasks")
    stems = sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml"))
    assert stems == [task.name for task in bundled_tasks()]


@pytest.mark.parametrize("name", ["digit", "coin", "color"])
def test_toy_family_prompts_are_short(name):
    # The demo's toy model family is trained on these prompts.
    assert all(len(p.text.split()) < 25 for p in bundled_task(name).prompts)


def test_closed_option_lists():
    assert bundled_task("digit").options == tuple(str(i) for i in range(10))
    assert bundled_task("number_1_10").options == tuple(str(i) for i in range(1, 11))
    assert bundled_task("number_1_100").options == tuple(str(i) for i in range(1, 101))
    assert bundled_task("die").options == tuple("123456")
    assert bundled_task("letter").options == tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert list(bundled_task("color").options) == BASIC_COLORS
    assert bundled_task("coin").options == ("heads", "tails")
    assert len(bundled_task("us_state").options) == 50
    assert len(bundled_task("month").options) == 12
    assert len(bundled_task("weekday").options) == 7
    assert {bundled_task(n).kind for n in ("animal", "fruit", "first_name")} == {"open"}


def test_unknown_bundled_task_says_how_to_list_them():
    with pytest.raises(NotFound, match="catalog tasks list"):
        bundled_task("dice")


def test_prompt_by_key():
    coin = bundled_task("coin")
    assert coin.prompt("plain").text.startswith("Flip a coin")
    with pytest.raises(NotFound, match="plain"):
        coin.prompt("nope")


def test_surface_forms_list_the_option_first_then_aliases():
    forms = bundled_task("coin").surface_forms()
    assert forms == {"heads": ("heads", "head", "h"), "tails": ("tails", "tail", "t")}


@pytest.mark.parametrize("name", SUITE)
def test_to_dict_round_trips_through_json(name):
    task = bundled_task(name)
    data = json.loads(json.dumps(task.to_dict()))
    again = spec_from_dict(data)
    assert again == task
    assert hash(again) == hash(task)


def test_loading_tasks_does_not_import_torch():
    code = "import sys, catalog.tasks as t; t.bundled_tasks(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- users' task files -------------------------------------------------------------------

GOOD = """
name = "pet"
description = "A pet."
kind = "closed"
options = ["cat", "dog", "guinea pig"]
normalizer = "choice"

[aliases]
cat = ["kitty"]
"guinea pig" = ["cavy"]

[[prompts]]
key = "plain"
text = "Pick a pet."

[[prompts]]
key = "terse"
text = "Pet:"
"""


def write(tmp_path, text, name="pet.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_a_user_task_file(tmp_path):
    task = load_task_file(write(tmp_path, GOOD))
    assert task.name == "pet"
    assert task.options == ("cat", "dog", "guinea pig")
    assert task.aliases == {"cat": ("kitty",), "guinea pig": ("cavy",)}
    assert task.prompts == (PromptSpec("plain", "Pick a pet."), PromptSpec("terse", "Pet:"))


def without(text: str, line_start: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(line_start))


PROMPTS = '[[prompts]]\nkey = "plain"\ntext = "Pick."\n'
BAD_FILES = {
    "syntax": ('name = "pet\nkind = "closed"\n', "line 1"),
    "missing_name": (without(GOOD, "name ="), "name: missing"),
    "missing_kind": (without(GOOD, "kind ="), "kind: missing"),
    "missing_normalizer": (without(GOOD, "normalizer ="), "normalizer: missing"),
    "missing_prompts": (GOOD.split("[[prompts]]")[0], "prompts: missing"),
    "bad_kind": (GOOD.replace('kind = "closed"', 'kind = "semi"'), "kind: 'semi' is not one of"),
    "closed_without_options": (
        f'name = "n"\nkind = "closed"\nnormalizer = "choice"\n{PROMPTS}',
        "options: a closed task needs a non-empty option list",
    ),
    "empty_options": (GOOD.replace('["cat", "dog", "guinea pig"]', "[]"), "options: a closed task needs"),
    "duplicate_option": (GOOD.replace('"dog", "guinea pig"', '"dog", "Dog"'), "options: duplicate option 'Dog'"),
    "duplicate_prompt_key": (GOOD.replace('key = "terse"', 'key = "plain"'), "prompts: duplicate prompt key 'plain'"),
    "alias_unknown_option": (GOOD.replace("cat = [", "horse = ["), "aliases.horse: 'horse' is not one of"),
    "alias_shared": (GOOD.replace('["cavy"]', '["kitty"]'), "aliases.guinea pig: 'kitty' already means 'cat'"),
    "alias_is_another_option": (GOOD.replace('["kitty"]', '["dog"]'), "aliases.cat: 'dog' already means 'dog'"),
    "unknown_normalizer": (GOOD.replace('"choice"', '"fuzzy"'), "normalizer: unknown normalizer 'fuzzy'"),
    "zero_prompts": ('prompts = []\n' + GOOD.split("[[prompts]]")[0], "prompts: a task needs at least one"),
    "empty_prompt_text": (GOOD.replace('"Pet:"', '"   "'), "prompts[1].text: empty prompt text"),
    "prompt_without_text": (GOOD.replace('text = "Pet:"', ""), "prompts[1].text: missing"),
    "unknown_field": (GOOD.replace("[aliases]", 'colour = "red"\n[aliases]'), "colour: unknown field"),
    "open_with_options": (GOOD.replace('"closed"', '"open"').replace('"choice"', '"open_word"'), "options: an open task"),
    "integer_options_not_integers": (
        f'name = "n"\nkind = "closed"\noptions = ["1", "two"]\nnormalizer = "integer"\n{PROMPTS}',
        "options[1]: 'two' is not an integer",
    ),
    "integer_bad_param": (
        f'name = "n"\nkind = "closed"\noptions = ["1"]\nnormalizer = "integer"\n[params]\nmin = "1"\n{PROMPTS}',
        "params.min: must be an integer",
    ),
    "choice_on_open_task": (f'name = "n"\nkind = "open"\nnormalizer = "choice"\n{PROMPTS}', "kind: the choice normalizer"),
    "open_word_bad_param": (
        f'name = "n"\nkind = "open"\nnormalizer = "open_word"\n[params]\nkeep_words = 0\n{PROMPTS}',
        "params.keep_words: must be a positive integer",
    ),
    "cased_form_unknown": (GOOD.replace("[aliases]", '[params]\ncased = ["Cat"]\n[aliases]'), "params.cased: 'Cat'"),
    "letter_options_not_letters": (
        f'name = "n"\nkind = "closed"\noptions = ["A", "BB"]\nnormalizer = "letter"\n{PROMPTS}',
        "options[1]: 'BB' is not a single letter",
    ),
    "name_with_space": (GOOD.replace('name = "pet"', 'name = "my pet"'), "name: 'my pet' must be"),
    "word_list_missing": (
        f'name = "n"\nkind = "open"\nnormalizer = "open_word"\n[params]\n'
        f'english_words = "absent.txt"\n{PROMPTS}',
        "params.english_words: cannot read 'absent.txt' next to the task file",
    ),
    "word_list_not_words": (
        f'name = "n"\nkind = "open"\nnormalizer = "open_word"\n[params]\n'
        f'common_words = [1, 2]\n{PROMPTS}',
        "params.common_words: must be a word list file name or a list of terms",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_task_file_names_file_and_field(tmp_path, case):
    text, expected = BAD_FILES[case]
    path = write(tmp_path, text, name=f"{case}.toml")
    with pytest.raises(InvalidInput) as error:
        load_task_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_task_file(tmp_path):
    with pytest.raises(InvalidInput, match="no such task file"):
        load_task_file(tmp_path / "absent.toml")


def test_from_dict_validates_like_a_file():
    data = bundled_task("coin").to_dict()
    data["kind"] = "sometimes"
    with pytest.raises(InvalidInput, match="^coin dict: kind: 'sometimes'"):
        spec_from_dict(data, source="coin dict")


def test_open_task_aliases_map_to_a_canonical_answer():
    text = f'name = "pet"\nkind = "open"\nnormalizer = "open_word"\n[aliases]\ncat = ["kitty", "Kitten"]\n{PROMPTS}'
    task = parse_task_text(text)
    assert task.surface_forms() == {"cat": ("cat", "kitty", "Kitten")}
