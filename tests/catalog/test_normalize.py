"""Normalizers on real-looking completions: chat answers, chatty preambles, base-model runs."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.errors import InvalidInput
from catalog.normalize import NORMALIZERS, Reading, get_normalizer, normalize
from catalog.renormalize import tally_readings
from catalog.tasks import bundled_task, bundled_tasks, parse_task_text

# (completion text, expected option or None) per bundled task.
CASES: dict[str, list[tuple[str, str | None]]] = {
    "digit": [
        ("7", "7"),
        # a field of something else is no answer; a field of the answer is
        ("Operation: 1 flipping a coin is a certain event.", None),
        (" B\n\nGiven:6\nTo find: Which face is", None),
        ("Random digit: 7", "7"),
        (" +1\n\nIn this question", None),  # not written as an option: out of range
        (" pink, green, blue, orange\nAlternate answer: 7", None),
        ("Heads or tails? I call: 7", "7"),
        ("7\u200b3", None),  # a zero-width space separates two values
        (" 7", "7"),
        ("7.", "7"),
        ("**7**", "7"),
        ("`7`", "7"),
        ('"7"', "7"),
        ("Sure! Here's a random digit: 7", "7"),
        ("I'll pick **4**.", "4"),
        ("7\n\nQuestion: pick", "7"),
        (" 3\nQuestion: Pick a random digit from 0 to 9.\nAnswer: 5", "3"),
        (" 7\nAnswer: 3", None),  # a second answer to the same question: ambiguous
        (" 7\nAnswer: 7", "7"),
        ("I can't generate truly random numbers, but here's one: 3", "3"),
        ("Here's a random digit between 0 and 9: 6", "6"),
        ("Sure! Picking a random digit from 0 to 9...\n\n**2**", "2"),
        ('{"digit": 5}', "5"),
        ('```json\n{"digit": 8}\n```', "8"),
        ("Answer: 0", "0"),
        ("seven", "7"),
        ("Zero.", "0"),
        ("My random digit is 9!", "9"),
        ("The random number is 42.", None),
        ("Here's a random digit between 0 and 9: 12", None),
        ("3.5", None),
        ("-3", None),
        ("", None),
        ("   ", None),
        ("banana", None),
        ("I'm sorry, I can't do that.", None),
    ],
    "number_1_10": [
        ("7", "7"),
        ("10", "10"),
        ("Sure! Here's a random number between 1 and 10: 7", "7"),
        ("I choose 3.", "3"),
        ("Random number from 1-10: **8**", "8"),
        ("The number is ten.", "10"),
        ("The random number is 42.", None),
        ("0", None),
        ("11", None),
        ('{"number": 6}', "6"),
        (" 4\nQuestion: Pick a random number between 1 and 10.", "4"),
    ],
    "number_1_100": [
        ("The answer is 21, not 1 or 2.", "21"),  # a correction is no list
        (" 17 million\nIs it wide or narrow?", None),  # a quantity, not 17
        (" Two thousand and 99.", None),
        (" 100 – 5\n100 -", None),  # an expression, not an answer
        ("To find the answer to this question: 3 * 3 * 3 * 3 * 4 = ", None),
        ("\n\nMultiple Choice\n(a) 6\n(b", None),  # a list cut by the token budget
        ("\nAn integer division has two possible values: 1 and", None),
        ('{\n  "json": [\n    {\n      "type": "json",\n      "prefix": "100",', None),
        ("If you were drawing one ticket out of the 120 tickets, and you picked a ticket "
         "number 85", None),  # the whole sentence is a hypothetical
        ("The number itself remains the same, which is 1.", "1"),
        ("42", "42"),
        ("The random number is 42.", "42"),
        ("Sure! Here's a random number between 1 and 100:\n\n**73**", "73"),
        ("I picked 57 for you.", "57"),
        ("Forty-two", "42"),
        ("one hundred", "100"),
        ("100", "100"),
        ("Answer: 27", "27"),
        ("The number I'm thinking of is 37. Did I guess right?", "37"),
        ("101", None),
        ("0", None),
        ("1,000", None),
        ("Here you go: 23%", None),
        ("I can't generate truly random numbers, but here's one: 64", "64"),
    ],
    "die": [
        ("4", "4"),
        ("🎲 You rolled a **5**!", "5"),
        ("*rolls the die* ... It's a 3!", "3"),
        ("The die shows six.", "6"),
        ('{"roll": 2}', "2"),
        ("I rolled a 7", None),
        ("0", None),
        (" 1\nQuestion: Roll a die.", "1"),
    ],
    "coin": [
        (" (heads if the coin is a 4 or tails if", None),  # a condition
        ("Heads", "heads"),
        ("Heads.", "heads"),
        ("heads", "heads"),
        ("H", "heads"),
        ("T", "tails"),
        ("tail", "tails"),
        ("My choice: tails", "tails"),
        ("**Tails!**", "tails"),
        ("The coin landed on heads.", "heads"),
        ("Sure! *flips coin* ... It's **Tails**!", "tails"),
        ('{"result": "tails"}', "tails"),
        ("Answer: heads", "heads"),
        (" tails\nQuestion: Flip a coin.\nAnswer: heads", "tails"),
        ("I don't have a coin, but I'll say heads.", "heads"),
        ("Heads or tails? I call: tails", "tails"),
        ("The coin is spinning...", None),
        ("", None),
        ("edge", None),
    ],
    "letter": [
        ("A: \n1. At Random: In this game, the first pick", None),  # a heading's label
        (" aHello Hey\nAnswer: for instance i get stuck at", None),  # the pronoun i
        ("Q", "Q"),
        ("q", "Q"),
        (" K", "K"),
        ("Here is a random letter: Q", "Q"),
        ("Here's a random letter: **M**", "M"),
        ("Sure! The letter I picked is **R**.", "R"),
        ("I pick Q.", "Q"),
        ("I'll go with the letter J.", "J"),
        ("A", "A"),
        ("I", "I"),
        ("My letter is A.", "A"),
        ("The letter 'X'", "X"),
        ('{"letter": "B"}', "B"),
        ("Answer: z", "Z"),
        (" E\nQuestion: Pick a random letter from A to Z.", "E"),
        ("Sure, here's a random letter:\n\nG\n\nLet me know if you need another!", "G"),
        ("I am a language model and I can pick a letter", None),
        ("", None),
        ("42", None),
    ],
    "rps": [
        ("Selection can include: rock,", None),
        ("  \n\n\n(The original paper)\nAnswer:  \n\n", None),  # short, but a mention
        ("Rock", "rock"),
        ("Paper!", "paper"),
        ("I choose scissors.", "scissors"),
        ("✊ Rock!", "rock"),
        ("✌️", "scissors"),
        ("Let's play! I'll throw... **paper**!", "paper"),
        ('{"move": "scissors"}', "scissors"),
        ("Rock, paper, scissors, shoot! I play: paper", "paper"),
        ("lizard", None),
    ],
    "color": [
        ("Blue", "blue"),
        ("blue.", "blue"),
        ("Sure! Here's a random color: **Teal**... just kidding, green", "green"),
        ("I'd go with violet.", "purple"),
        ("Grey", "gray"),
        ("Light blue", "blue"),
        ("How about a nice shade of red?", "red"),
        ('{"color": "orange"}', "orange"),
        ("Answer: purple", "purple"),
        (" green\nQuestion: Name a random color.\nAnswer: blue", "green"),
        ("Chartreuse", None),
        ("", None),
    ],
    "suit": [
        ("Hearts", "hearts"),
        ("♠ Spades", "spades"),
        ("♦", "diamonds"),
        ("I drew the queen of clubs.", "clubs"),
        ("The suit is: Diamond", "diamonds"),
        ('{"suit": "hearts"}', "hearts"),
        ("Stars", None),
    ],
    "weekday": [
        ("Today I'd rather choose Monday.", "Monday"),
        ("I'll amaze you. In chronological order: Monday (Chidumu - Edo-2), Thursday (Mana",
         None),  # a list's introduction
        ("Wednesday", "Wednesday"),
        ("wednesday.", "Wednesday"),
        ("Let's go with **Thursday**!", "Thursday"),
        ("Fri", "Friday"),
        ("How about Tuesday? It's usually a quiet day.", "Tuesday"),
        ("I don't have a favorite day, but here's one: Sunday", "Sunday"),
        ("Funday", None),
    ],
    "month": [
        ("March", "March"),
        ("october", "October"),
        ("May", "May"),
        ("Sure! May is a lovely month.", "May"),
        ("You may like this one: September", "September"),
        ("Sept.", "September"),
        ("Their birthday is in **July**.", "July"),
        ('{"month": "April"}', "April"),
        ("Smarch", None),
    ],
    "us_state": [
        ("Ohio", "Ohio"),
        ("New York", "New York"),
        ("new  york", "New York"),
        ("North Carolina.", "North Carolina"),
        ("I'd suggest visiting **North Carolina**!", "North Carolina"),
        ("West Virginia", "West Virginia"),
        ("Virginia", "Virginia"),
        ("Arkansas", "Arkansas"),
        ("Kansas", "Kansas"),
        ("How about Rhode Island? It's small but lovely.", "Rhode Island"),
        ("Sure! Here's a random US state: Montana", "Montana"),
        ("Hawai'i", "Hawaii"),
        ('{"state": "Texas"}', "Texas"),
        ("OK, I pick Colorado", "Colorado"),
        ("Ontario", None),
        ("", None),
    ],
    "animal": [
        ("Elephant", "elephant"),
        ("Sure! Here's a random animal: Elephant", "elephant"),
        ("Sure! Here's a random animal:\n\n**Red Panda**\n\nRed pandas live in the Himalayas.", "red panda"),
        ("A giraffe.", "giraffe"),
        ("The axolotl!", "axolotl"),
        ("🦁 Lion", "lion"),
        ("I'll go with a penguin.", "penguin"),
        ("How about an octopus?", "octopus"),
        ("My random animal is the koala.", "koala"),
        ("Capybara - the world's largest rodent.", "capybara"),
        ('{"animal": "zebra"}', "zebra"),
        ("Answer: Fox", "fox"),
        (" dog\nQuestion: Name a random animal.\nAnswer: cat", "dog"),
        (" Dog, cat and mouse", None),
        ("Here are some animals:\n1. Dog\n2. Cat", None),
        ("Right there, I have a glimpse of a penguin.", "penguin"),
        ("This random animal ACTUALLY includes a large lizard. It's a Komodo dragon.",
         "komodo dragon"),
        ('I\'d like to provide a sample JSON example:\n\n```json\n{"animal": "cat"}\n```', "cat"),
        ("Butter.", None),
        ("Two red pandas", "red panda"),
        ("Great white shark", "great white shark"),
        ("I'm sorry, but I can't pick randomly.", None),
        ("", None),
        ("42", None),
    ],
    "fruit": [
        (" A golden apple or orange.\n\nAnswer: A golden apple", "apple"),
        ("Mango", "mango"),
        ("Sure! How about a **banana**? 🍌", "banana"),
        ("Here's a random fruit: kiwi. Kiwis are rich in vitamin C.", "kiwi"),
        ("Dragon fruit", "dragon fruit"),
        ("An apple.", "apple"),
        ('{"fruit": "Pineapple"}', "pineapple"),
        ("So many fruits to choose from, and each one is delicious in its own way!", None),
        ("Hmm... Papaya!", "papaya"),
    ],
    "first_name": [
        ("Olivia", "olivia"),
        ("Emily Johnson", "emily"),
        ("Sure! How about **Liam**?", "liam"),
        ("Here's a random first name: Zoë", "zoe"),
        ("Here's a random first name: Zephyrine", "zephyrine"),
        ("I'm just an AI and don't have a name.", None),
        ("My choice: Olivia", "olivia"),
        ("Your character's name could be: Marcus", "marcus"),
        ('{"name": "Aiden"}', "aiden"),
        ("Name: Jean-Luc", "jean-luc"),
        (" Sarah\nQuestion: Give me a random first name.", "sarah"),
        # a made-up name is no English word; a name that is a common word counts where
        # singled out, or alone in a short reply
        ("Window.", None),
        ("Zephyrine.", "zephyrine"),
        (" Many people have suggested names such as these", None),
        ("Will be displayed in random order.", None),
        ("Will.", "will"),
        ("My name is Will.", "will"),
        ("I'm just an AI and don't have a name.", None),
        # a reply that opens with a full name keeps its given name, listed or made up
        ("Mala Alex Robobos! Color: Black", "mala"),
        ("Heustrelly Forever Shredby-De-Risa Isolate", "heustrelly"),
        ("HailyAbadanna", "haily"),  # two names run together
        ("DeShawn", "deshawn"),  # a listed name with a capital inside stays whole
        ("Hello There, my name is Bob", "bob"),
        ("Call Me Maybe", None),
        ("Greetings, a being from the realm of online gaming.", None),
        (" Illeth\nAnswer: Ben\n\nDescribe", None),  # a made-up name and a listed one
        ("Zephyrine! Like Emily.", "zephyrine"),
        ("Ex-cop. I'm Kimberly Broom, a kindly AI", "kimberly"),
    ],
}


@pytest.mark.parametrize(
    ("task_name", "text", "expected"),
    [(task, text, expected) for task, cases in CASES.items() for text, expected in cases],
)
def test_real_looking_completions(task_name, text, expected):
    assert normalize(bundled_task(task_name), text) == expected


def test_every_bundled_task_has_cases():
    assert {task.name for task in bundled_tasks()} <= set(CASES)


@pytest.mark.parametrize("task", [t for t in bundled_tasks() if t.kind == "closed"], ids=lambda t: t.name)
def test_every_option_and_alias_normalizes_to_its_option(task):
    cased = task.params.get("cased", [])
    for option, forms in task.surface_forms().items():
        for form in forms:
            assert normalize(task, form) == option
            shouted = form if form in cased else form.upper()
            assert normalize(task, f"{shouted}.") == option


# --- the property: chatty wrappers don't change the answer --------------------------------

PREAMBLES = [
    "{x}",
    " {x}",
    "{x}.",
    "{x}!",
    "**{x}**",
    "`{x}`",
    '"{x}"',
    "Answer: {x}",
    "Sure! Here's my pick: {x}",
    "Sure! Here's a random pick:\n\n{x}",
    "I'll go with {x}.",
    "How about {x}?",
    "My choice: **{x}**",
    "Okay, let me pick one at random... {x}",
    "I can't be truly random, but here's one: {x}",
    '{{"answer": "{x}"}}',
]
SUFFIXES = [
    "",
    "\n",
    "\n\nHope that helps!",
    "\n\nLet me know if you would like another one.",
    "\nQuestion: Pick again.\nAnswer:",
]
OPEN_ANSWERS = {"animal": ["lion", "Red Panda", "axolotl"], "fruit": ["mango", "dragon fruit"],
                "first_name": ["Olivia", "Zoë", "Jean-Luc"]}


@st.composite
def closed_answers(draw):
    task = draw(st.sampled_from([t for t in bundled_tasks() if t.kind == "closed"]))
    option, forms = draw(st.sampled_from(sorted(task.surface_forms().items())))
    form = draw(st.sampled_from(forms))
    form = draw(st.sampled_from([form, form.casefold(), form.upper(), form.title()]))
    cased = task.params.get("cased", [])
    if form.casefold() in {c.casefold() for c in cased}:  # "may" is no month: keep "May"
        form = next(f for f in forms if f in cased)
    return task, option, form


@settings(max_examples=400, deadline=None, derandomize=True)
@given(closed_answers(), st.sampled_from(PREAMBLES), st.sampled_from(SUFFIXES))
def test_wrapped_option_normalizes_back_closed(answer, preamble, suffix):
    task, option, form = answer
    assert normalize(task, preamble.format(x=form) + suffix) == option


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.sampled_from([(task, answer) for task, answers in OPEN_ANSWERS.items()
                     for answer in answers]),
    st.sampled_from(PREAMBLES),
    st.sampled_from(SUFFIXES),
)
def test_wrapped_answer_normalizes_back_open(task_answer, preamble, suffix):
    task_name, answer = task_answer
    task = bundled_task(task_name)
    expected = answer.casefold().replace("ë", "e")  # vocabulary terms are unaccented
    if task.params.get("keep_words"):
        expected = expected.split()[0]
    assert normalize(task, preamble.format(x=answer) + suffix) == expected


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([t.name for t in bundled_tasks()]), st.text(max_size=80))
def test_any_text_gives_an_option_or_none(task_name, text):
    task = bundled_task(task_name)
    result = normalize(task, text)
    if task.kind == "closed":
        assert result is None or result in task.options
    else:
        assert result is None or (result == result.casefold().strip() and result)


def test_dotless_i_does_not_break_choice():
    # "ı" matches "i" case-insensitively but does not case-fold to it.
    assert normalize(bundled_task("us_state"), "Illınoıs") is None
    assert normalize(bundled_task("us_state"), "Ohio, not Illınoıs") == "Ohio"


# --- registry, versions, counts -------------------------------------------------------------


def test_registry_names_and_versions():
    assert set(NORMALIZERS) >= {"integer", "choice", "letter", "open_word"}
    for name, normalizer in NORMALIZERS.items():
        assert normalizer.name == name
        assert isinstance(normalizer.version, str) and normalizer.version
        assert get_normalizer(name) is normalizer


def test_unknown_normalizer_is_invalid_input():
    with pytest.raises(InvalidInput, match="unknown normalizer 'fuzzy'.*integer"):
        get_normalizer("fuzzy")


def test_tally_readings_merges_texts_per_option_and_reason():
    coin = bundled_task("coin")
    read = functools.partial(get_normalizer("choice").read, task=coin)
    counts = tally_readings(read, {"Heads": 5, "heads.": 2, " T": 3, "edge": 1})
    assert counts.options == {"heads": 7, "tails": 3}
    assert counts.reasons == {"no_answer": 1}
    assert counts.n_invalid == 1
    assert counts.reason_columns() == {"n_no_answer": 1, "n_ambiguous": 0,
                                       "n_off_category": 0, "n_out_of_range": 0}
    assert counts.readings["edge"] == Reading(None, "no_answer")


def test_user_task_aliases_and_multi_word_options():
    task = parse_task_text(
        'name = "pet"\nkind = "closed"\nnormalizer = "choice"\noptions = ["cat", "guinea pig"]\n'
        '[aliases]\ncat = ["kitty"]\n[[prompts]]\nkey = "plain"\ntext = "Pet?"\n'
    )
    assert normalize(task, "A Guinea Pig!") == "guinea pig"
    assert normalize(task, "guinea\npig") == "guinea pig"
    assert normalize(task, "my kitty") == "cat"
    assert normalize(task, "guinea") is None


def test_open_task_aliases_give_the_canonical_answer():
    task = parse_task_text(
        'name = "pet"\nkind = "open"\nnormalizer = "open_word"\n'
        '[aliases]\ncat = ["kitty", "Kitten"]\n[[prompts]]\nkey = "plain"\ntext = "Pet?"\n'
    )
    assert normalize(task, "A kitten!") == "cat"
    assert normalize(task, "Dog") == "dog"


def test_normalizers_do_not_import_torch():
    code = "import sys, catalog.normalize; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
