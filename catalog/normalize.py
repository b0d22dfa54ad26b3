"""Normalizers: read a model's completion as one of a task's options, or say why it has none.

Pure Python (no torch), so the core and the analysis can use it. A normalizer has a
``name`` (what task files refer to), a ``version`` (stored with every run; bump it whenever
the behaviour changes, so that counts normalized by different rules are never mixed
silently) and ``read(text, task) -> Reading``: the option, or the reason the text gives
none (``no_answer``, ``ambiguous``, ``off_category``, ``out_of_range``).

The rules are the coding rules of docs/normalization.md, measured against completions of
real models coded by hand (tests/data/normalization/):

1. Only the reply counts: a scaffold's next turn ("Question: ..."), a chat role line or a
   special token (``<end_of_turn>``) ends it.
2. Candidates are the answer-like tokens: an option or alias (a whole word or phrase), an
   integer or number word, a standalone letter, a vocabulary term of an open task. Mentions
   that are not answers are masked first: ranges ("between 1 and 10"), list markers ("1)",
   "Step 2"), percentages, "six-sided".
3. An enumeration, a disjunction or an echo of the options ("heads or tails", "0 1 2 3",
   "blue, gray, or red") holds no answer: candidates in a list of two or more different
   values are set aside.
4. Of the rest, a candidate singled out wins, by the first rule that finds one: stated as the
   answer ("The answer is 4", "I pick 7", "Answer: tails", a JSON field, a colon right
   before it, a first clause of its own: "Tails, I think"); alone on its line; wrapped in bold, backticks or
   quotes. Two different values singled out by the same rule are ``ambiguous``.
5. Otherwise one value is the answer where it opens the reply or its sentence (at most one
   word before it: "Okay, 7"; "my phone be scissors" is a mention); two or more are
   ``ambiguous``; none is ``no_answer``. Weak candidates (number words, one-letter aliases,
   names that are common words) count only when singled out or when the reply is a few
   words long.
6. The value is mapped to its option; an integer outside the range is ``out_of_range``; an
   open task's answer outside its vocabulary is ``off_category``.

Compiled patterns are cached per task, so a call costs a few regex scans of the text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from catalog.errors import InvalidInput
from catalog.lexicon import Vocabulary, fold, vocabulary
from catalog.limits import text_max
from catalog.reading import (
    DECOR,
    NO_ANSWER,
    OFF_CATEGORY,
    OUT_OF_RANGE,
    WORD_END,
    WORD_START,
    Candidate,
    Reading,
    answer_region,
    decide,
)

if TYPE_CHECKING:
    from catalog.taskspec import TaskSpec

# The longest answer an option column holds (the same on both databases).
LONGEST_ANSWER = text_max("option_counts.option")

# Words of the question and of chat that are no made-up name, even with a capital.
_NOT_NAMES = frozenset(
    "answer question name names random first sure okay ok yes no hello hi hey thanks "
    "certainly absolutely great greetings welcome dear oh wow".split())
# A reply opening with a capitalized name and another capitalized word after it
# ("Mala Alex", "Abu Abd"), or with one capitalized word that runs two together ("HailyAbadanna").
_FULL_NAME = re.compile(r"[\s*_`\"'“‘]*([A-Z][a-z]+(?:[A-Z][a-z]+)*)(?:([ \t]+[A-Z][a-z]))?")
# The rest of a full name, then a comma and another capitalized word.
_NAME_LIST = re.compile(r"[A-Za-z'’-]*(?:[ \t]+[A-Z][A-Za-z'’-]*)*[ \t]*,[ \t]*[A-Z]")
_CAMEL_BREAK = re.compile(r"(?<=[a-z])(?=[A-Z])")
# The reply's first word, as a clause of its own ("Hyla...", "Zephyrine!").
_FIRST_WORD = re.compile(r"[\s*_`\"'“‘]*([^\W\d_]+(?:-[^\W\d_]+)?)[*_`\"'”’]*"
                         r"[ \t]*(?:[.!?,;\n…]|\Z)")



class Normalizer:
    """Base class: a named, versioned reading of a completion text (an option, or why none).

    >>> from catalog.tasks import bundled_task
    >>> get_normalizer("choice").read("Tails!", bundled_task("coin"))
    Reading(option='tails', reason=None)
    >>> get_normalizer("choice").read("Heads or tails?", bundled_task("coin"))
    Reading(option=None, reason='no_answer')
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]

    def read(self, text: str, task: TaskSpec, lenient: bool = False) -> Reading:
        """The option ``text`` gives, or why none; ``lenient``: by the rules before
        version 2 (enumerations and several values count as their first candidate)."""
        raise NotImplementedError

    def __call__(self, text: str, task: TaskSpec) -> str | None:
        """The option, or None for an invalid text."""
        return self.read(text, task).option

    def check(self, task: TaskSpec) -> str | None:
        """A problem with a task that uses this normalizer ("field: problem"), or None."""
        return None

    def __repr__(self) -> str:
        return f"<normalizer {self.name} v{self.version}>"


class IntegerNormalizer(Normalizer):
    """Integers and number words; the options are the integers ``params.min``..``params.max``."""

    name = "integer"
    version = "4"
    description = "an integer in [min, max] (digits or words like 'seven'); out of range is invalid"

    _INTEGER = re.compile(r"(?<![\w.])(?<!\d,)[-+]?\d+(?![\w]|[.,]\d)")
    # Numbers that are not answers: restated ranges ("between 1 and 10", "1-10", "0 to 9"),
    # list markers and labels ("1)", "Step 2", "#3"), quantities ("50%", "six-sided").
    _MENTIONS = re.compile(
        r"\b(?:between|from)\s+\S+\s+(?:and|to|through)\s+[\w-]+"
        r"|(?<![\w.])\d+\s*(?:-|–|to|through)\s*\d+(?!\w)"
        r"|^[ \t>*•-]*\d+[.)](?=[ \t]+\S)|\(\d+\)"
        r"|\b(?:step|case|option|example|part|round|question|problem|level|chapter|version|"
        r"page|item|no\.|#)\s*\d+"
        r"|#\d+|\d+(?:\.\d+)?\s*(?:%|percent|°)|\b[\w]+[\s-]sided\b|\bout of\s+\w+"
        r"|\b\d+-[A-Za-z]+"
        r"|(?:[<>]=?|≥|≤|\bdivisible by|\bmultiples? of|\bfactors? of|\bpowers? of)\s*\d+"
        r"|\b\d+\s+(?:numbers|digits|integers|times|ways|items|cards|dice|sides|faces|people|"
        r"choices|options|of\b)"
        # "17 million", "two thousand and 99": a large number, not 17, 2 or 99
        r"|\b[\w-]+\s*(?:thousand|million|billion|trillion)\b(?:[\s,]+(?:and\s+)?[\w-]+)?"
        # an expression, to the end of its line: "10-$x$", "100 -" (cut off), "3 * 3 * 4 =",
        # "9/9", "100 / ((100/2 +"
        r"|(?<![\w.])\d+[ \t]*(?:[-–][ \t]*(?=[$(]|\Z)|[+*/×÷^][ \t]*(?=[\w$(\[]))[^\n]*",
        re.IGNORECASE | re.MULTILINE,
    )
    _UNITS = (
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen"
    ).split()
    _TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
    _WORD_VALUES = {
        **{word: value for value, word in enumerate(_UNITS)},
        **{word: 20 + 10 * i for i, word in enumerate(_TENS)},
        "fourty": 40,
        "hundred": 100,
    }
    _tens = "|".join(_TENS + ["fourty"])
    _units = "|".join(sorted(_UNITS, key=len, reverse=True))
    _ones = "one|two|three|four|five|six|seven|eight|nine"
    _below_100 = rf"(?:(?:{_tens})(?:[\s-]+(?:{_ones}))?|{_units})"
    _WORDS = re.compile(
        rf"{WORD_START}(?:(?:(?:a|one)\s+)?hundred(?:\s+(?:and\s+)?{_below_100})?|{_below_100})"
        rf"{WORD_END}",
        re.IGNORECASE,
    )

    def check(self, task: TaskSpec) -> str | None:
        if task.kind != "closed":
            return "kind: the integer normalizer needs a closed task (options are the integers)"
        for i, option in enumerate(task.options):
            if not re.fullmatch(r"-?\d+", option) or str(int(option)) != option:
                return f"options[{i}]: {option!r} is not an integer written plainly (like '7')"
        for bound in ("min", "max"):
            value = task.params.get(bound)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return f"params.{bound}: must be an integer, got {value!r}"
        low, high = self._bounds(task)
        if low > high:
            return f"params.min: {low} is greater than params.max {high}"
        return None

    def read(self, text: str, task: TaskSpec, lenient: bool = False) -> Reading:
        region = answer_region(text)
        masked = self._MENTIONS.sub(lambda m: " " * len(m.group()), region)
        # "0000", "07" or "+1" is not written as an option: its value is kept as written.
        candidates = [
            Candidate(m.start(), m.end(), self._as_written(m.group()))
            for m in self._INTEGER.finditer(masked)
        ]
        candidates += [
            Candidate(m.start(), m.end(), str(self.word_value(m.group())), weak=True,
                      pronoun=m.group().casefold() == "one")
            for m in self._WORDS.finditer(masked)
        ]
        candidates.sort(key=lambda c: c.start)
        low, high = self._bounds(task)
        options = _option_set(task)

        def to_option(value: str) -> Reading:
            if value in options and low <= int(value) <= high:
                return Reading(value)
            return OUT_OF_RANGE

        return decide(masked, candidates, to_option, lenient)

    @staticmethod
    def _as_written(number: str) -> str:
        digits = number.lstrip("-")
        if number.startswith("+") or (digits[:1] == "0" and len(digits) > 1):
            return digits
        return str(int(number))

    @classmethod
    def word_value(cls, words: str) -> int:
        """The integer a number phrase like 'forty-two' or 'a hundred and five' stands for."""
        total = 0
        for word in re.split(r"[\s-]+", words.casefold()):
            if word == "hundred":
                total = max(total, 1) * 100
            elif word in cls._WORD_VALUES:
                total += cls._WORD_VALUES[word]
        return total

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _bounds(task: TaskSpec) -> tuple[int, int]:
        values = [int(option) for option in task.options] or [0]
        return int(task.params.get("min", min(values))), int(task.params.get("max", max(values)))


class ChoiceNormalizer(Normalizer):
    """Whole-word or whole-phrase matches of a closed task's options and aliases.

    The longest form wins at the same position ("West Virginia" over "Virginia"); forms
    listed in ``params.cased`` match only with that exact capitalization (``"May"`` the
    month, not "you may"). A one-letter alias ("H" for heads) is a weak form.
    """

    name = "choice"
    version = "4"
    description = "an option or alias as a whole word or phrase (case-insensitive)"

    def check(self, task: TaskSpec) -> str | None:
        if task.kind != "closed":
            return "kind: the choice normalizer needs a closed task with options"
        cased = task.params.get("cased", [])
        if not isinstance(cased, list):
            return "params.cased: must be a list of option or alias forms"
        forms = {form for forms in task.surface_forms().values() for form in forms}
        for form in cased:
            if form not in forms:
                return f"params.cased: {form!r} is not one of the task's options or aliases"
        return None

    def read(self, text: str, task: TaskSpec, lenient: bool = False) -> Reading:
        pattern, option_of = _choice_matcher(task)
        region = answer_region(text)
        # A match whose case-fold is not a form's ("ı" matches "i" under IGNORECASE) is skipped.
        candidates = [
            Candidate(m.start(), m.end(), option, weak=len(m.group()) == 1)
            for m in pattern.finditer(region)
            if (option := _option_of_form(option_of, fold(m.group()))) is not None
        ]
        return decide(region, candidates, Reading, lenient)


class LetterNormalizer(Normalizer):
    """One letter of the alphabet, without mistaking the article "a" or the pronoun "I"."""

    name = "letter"
    version = "4"
    description = "a single standalone letter (not the article 'a' or pronoun 'I' in a sentence)"

    # A standalone letter: not part of a word, a contraction ("I'm") or an abbreviation ("e.g.").
    _LETTER = re.compile(r"(?<!\w)(?<!\w['’.])[A-Za-z](?!\w)(?!['’]\w)(?!\.\w)")
    # "a" / "A" / "I" / "i" followed by a word are the article and the pronoun.
    _WORD_AFTER = re.compile(r"[ \t]+[\"'“‘«*_`]*[A-Za-z]")
    _AFTER_LETTER = re.compile(r"\bletter[\s*_`\"'“‘«:]*\Z", re.IGNORECASE)

    def check(self, task: TaskSpec) -> str | None:
        if task.kind != "closed":
            return "kind: the letter normalizer needs a closed task with letter options"
        for i, option in enumerate(task.options):
            if not re.fullmatch(r"[A-Za-z]", option):
                return f"options[{i}]: {option!r} is not a single letter"
        return None

    def read(self, text: str, task: TaskSpec, lenient: bool = False) -> Reading:
        region = answer_region(text)
        candidates = [
            Candidate(m.start(), m.end(), m.group().upper(),
                      weak=not self._after_letter(region, m.start()))
            for m in self._LETTER.finditer(region)
            if not self._article_or_pronoun(region, m)
        ]
        options = _option_set(task)

        def to_option(value: str) -> Reading:
            option = options.get(value.casefold())
            return Reading(option) if option else OUT_OF_RANGE

        return decide(region, candidates, to_option, lenient)

    def _after_letter(self, text: str, start: int) -> bool:
        """After the word "letter" ("the letter A is my pick")."""
        return bool(self._AFTER_LETTER.search(text, 0, start))

    def _article_or_pronoun(self, text: str, match: re.Match) -> bool:
        return match.group() in "aAiI" and bool(self._WORD_AFTER.match(text, match.end()))


class OpenWordNormalizer(Normalizer):
    """The answer of an open task, as a term of the task's vocabulary, or as a phrase.

    With a vocabulary (``params.vocabulary``, the category's terms), the terms found in the
    reply are the candidates and the rules of closed tasks choose among them ("I have a
    glimpse of a penguin" -> "penguin", "a large lizard. It's a Komodo dragon." -> "komodo
    dragon"); a short answer phrase that is no term is ``off_category`` ("Butter."), unless
    ``params.unlisted = "accept"`` (made-up first names). ``params.vocabulary_cased``
    matches only capitalized words (names). Without a vocabulary (``category = "any"``), the
    answer is the reply's first answer phrase: the first line that is not a preamble, after
    its last colon, without lead-ins ("I'll go with"), cut at the first clause break,
    without markdown, quotes, articles and punctuation, case-folded; longer than
    ``params.max_words`` words (default 3) or starting like a refusal, it is no answer.
    ``params.keep_words`` keeps only the first words (first_name: 1, "Emily Johnson" ->
    "emily"). Aliases map other forms to a canonical answer.
    """

    name = "open_word"
    version = "4"
    description = "a term of the task's vocabulary, or the answer phrase, case-folded"

    _LEAD_IN = re.compile(
        r"^(?:(?:sure|okay|ok|alright|all right|certainly|of course|absolutely|yes|hmm+|well|"
        r"here you go|here it is|let's see|let me think)\b[\s!,.…]*"
        r"|(?:i(?:'ll| will| would|'d)?|let's|let me|we'll)\s+"
        r"(?:go with|pick|choose|select|say|name|suggest)\s+"
        r"|how about\s+|what about\s+|maybe\s+|perhaps\s+|it's\s+|it is\s+"
        r"|(?:my|the|your|a)\s+(?:random\s+)?(?:\w+\s+){0,2}?(?:answer|choice|pick|selection|"
        r"suggestion|animal|fruit|name|word)\s+(?:is|would be|will be)\s+)+",
        re.IGNORECASE,
    )
    _BREAK = re.compile(r"[.!?,;:(\[—–\n]|\s-\s|\s(?:is|are|was|which|because|as)\s")
    _ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
    _EDGES = re.compile(r"^[\W_]+|[\W_]+$")
    _REFUSAL_START = frozenset(
        "i i'm i’m i'll i'd i've sorry unfortunately as here here's you we it this that there "
        "let let's please".split()
    )
    _PREAMBLE_END = re.compile(r":|\.\.\.|…")
    _NUMBERED = re.compile(r"^\s*\d+[.)]\s+")  # "1. Dog" in a numbered list
    _UNLISTED = ("off_category", "accept")

    def check(self, task: TaskSpec) -> str | None:
        if task.kind != "open":
            return "kind: the open_word normalizer is for open tasks (use choice for closed ones)"
        for key in ("max_words", "keep_words"):
            value = task.params.get(key)
            if value is not None and (type(value) is not int or value < 1):
                return f"params.{key}: must be a positive integer, got {value!r}"
        for key in ("vocabulary", "english_words", "common_words"):
            terms = task.params.get(key)
            if terms is not None and (
                not isinstance(terms, list) or not all(isinstance(t, str) for t in terms)
            ):
                return f"params.{key}: must be a word list file name or a list of terms"
        unlisted = task.params.get("unlisted", "off_category")
        if unlisted not in self._UNLISTED:
            return f"params.unlisted: must be one of {', '.join(self._UNLISTED)}, got {unlisted!r}"
        return None

    def read(self, text: str, task: TaskSpec, lenient: bool = False) -> Reading:
        reading = self._read(text, task, lenient)
        if reading.option is not None and len(reading.option) > LONGEST_ANSWER:
            return NO_ANSWER  # no option column of either database holds it
        return reading

    def _read(self, text: str, task: TaskSpec, lenient: bool) -> Reading:
        region = answer_region(text)
        phrase = self.answer_phrase(region, task)
        terms = _task_vocabulary(task)
        if terms is None or lenient:
            return Reading(_open_alias_map(task).get(phrase, phrase)) if phrase else NO_ANSWER
        if task.params.get("unlisted") == "accept" and task.params.get("keep_words") == 1:
            given = self._given_name(region, task)
            if given is not None:
                return Reading(given)
        candidates = self._terms(region, task, terms)
        if candidates and task.params.get("unlisted") == "accept":
            first = self._made_up_first_word(region, task)
            if first is not None and first.value not in terms:
                candidates = [first, *candidates]  # " Illeth\nAnswer: Ben": two answers
        if candidates:
            return decide(region, candidates, Reading)
        if not phrase and not (task.params.get("unlisted") == "accept"
                               and _FIRST_WORD.match(region)):
            return NO_ANSWER
        if task.params.get("unlisted") == "accept":
            # A made-up name is no English word ("Call it Tiger", "Smuggler" are words).
            first = self._made_up_first_word(region, task)
            if first is not None:
                return Reading(first.value)  # "Hyla... please feel free"
            if phrase and phrase not in _not_names(task) and self._looks_like_a_name(region,
                                                                                     phrase):
                return Reading(phrase)
        return OFF_CATEGORY if phrase else NO_ANSWER

    def _terms(self, region: str, task: TaskSpec, terms: Vocabulary) -> list[Candidate]:
        """The vocabulary terms (and aliases) in the reply; a full name ("Emily Johnson")
        is its first word when the task keeps only that."""
        aliases = _open_alias_map(task)
        # A name that is also a very common word ("Will be displayed") is a weak form: it
        # counts only where singled out, or alone in a short reply.
        common = _word_set(task, "common_words")
        found = [Candidate(m.start, m.end, aliases.get(m.term, m.term), weak=m.term in common)
                 for m in terms.find(region)]
        # "Wolf Puppy", "Emily Johnson": a term right after another is one compound answer
        return [c for i, c in enumerate(found)
                if i == 0 or region[found[i - 1].end : c.start] != " "]

    @staticmethod
    def _made_up_first_word(region: str, task: TaskSpec) -> Candidate | None:
        """The reply's first word as a clause of its own, capitalized and no English word
        or part of one ("Zephyrine!"; not "Smuggler", "Ex-cop"): a made-up name."""
        first = _FIRST_WORD.match(region)
        if first is None or not first.group(1)[0].isupper():
            return None
        name = fold(first.group(1))
        if any(part in _not_names(task) for part in (name, *name.split("-"))):
            return None
        return Candidate(first.start(1), first.end(1), name)

    def _given_name(self, region: str, task: TaskSpec) -> str | None:
        """A reply that opens with a full name keeps its given name, listed or made up:
        "Mala Alex Robobos!" -> "mala", "Abu Abd al Rahim." -> "abu"; a made-up name run
        together with the next ("HailyAbadanna") is split where a capital starts the next.
        Not a name: an English word ("Call Me"), a word of the question or of chat."""
        opening = _FULL_NAME.match(region)
        if opening is None or _NAME_LIST.match(region, opening.end()):
            return None  # "Amina Dakami, Elon Musk": a list of names
        first = opening.group(1)
        if not opening.group(2):  # one word: two names run together, or no full name
            parts = _CAMEL_BREAK.split(first)
            if len(parts) < 2 or fold(first) in _task_vocabulary(task):
                return None
            first = parts[0]
        name = fold(first)
        if len(name) < 2 or name in _not_names(task):
            return None
        return name

    @staticmethod
    def _looks_like_a_name(region: str, phrase: str) -> bool:
        """Written with a capital, letters only: a made-up name, not a word."""
        return phrase.replace("-", "").isalpha() and any(
            word[:1].isupper() and fold(word).startswith(phrase) for word in region.split()
        )

    def answer_phrase(self, region: str, task: TaskSpec) -> str | None:
        """The reply's answer phrase, case-folded, or None when it has none."""
        phrase = self._answer_line(region)
        phrase = self._LEAD_IN.sub("", phrase.strip(DECOR))
        phrase = self._BREAK.split(phrase, maxsplit=1)[0]
        phrase = self._EDGES.sub("", phrase.strip(DECOR))
        phrase = self._ARTICLE.sub("", phrase)
        words = fold(self._EDGES.sub("", phrase)).split()
        if not words or words[0] in self._REFUSAL_START:
            return None
        if len(words) > task.params.get("max_words", 3):
            return None
        keep = task.params.get("keep_words")
        answer = " ".join(words[:keep] if keep else words)
        return answer if any(ch.isalpha() for ch in answer) else None

    @classmethod
    def _answer_line(cls, region: str) -> str:
        """The first line with an answer, after its last colon or ellipsis ("Hmm... Lion")."""
        for line in region.splitlines():
            answer = cls._PREAMBLE_END.split(cls._NUMBERED.sub("", line))[-1].strip(DECOR)
            if answer:  # else blank, or a preamble like "Sure! Here's a random animal:"
                return answer
        return ""


NORMALIZERS: dict[str, Normalizer] = {
    normalizer.name: normalizer
    for normalizer in (
        IntegerNormalizer(),
        ChoiceNormalizer(),
        LetterNormalizer(),
        OpenWordNormalizer(),
    )
}


def get_normalizer(name: str) -> Normalizer:
    """The normalizer registered under ``name`` (InvalidInput lists the known ones)."""
    try:
        return NORMALIZERS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown normalizer {name!r}; the normalizers are: {', '.join(NORMALIZERS)}"
        ) from None


def normalize(task: TaskSpec, text: str) -> str | None:
    """The task's option for a completion text, or None if it is invalid."""
    return get_normalizer(task.normalizer)(text, task)


def read(task: TaskSpec, text: str, lenient: bool = False) -> Reading:
    """The task's reading of a completion text: its option, or why it has none."""
    return get_normalizer(task.normalizer).read(text, task, lenient)


@functools.lru_cache(maxsize=256)
def _option_set(task: TaskSpec) -> dict[str, str]:
    """Case-folded option -> option."""
    return {option.casefold(): option for option in task.options}


@functools.lru_cache(maxsize=256)
def _choice_matcher(task: TaskSpec) -> tuple[re.Pattern[str], dict[str, str]]:
    """One alternation of every surface form (longest first) and folded form -> option."""
    cased = set(task.params.get("cased", []))
    option_of: dict[str, str] = {}
    alternatives = []
    for option, forms in task.surface_forms().items():
        for form in forms:
            option_of[fold(form)] = option
            alternatives.append(form)
    alternatives.sort(key=len, reverse=True)
    body = "|".join(_form_pattern(form, form in cased) for form in alternatives)
    return re.compile(f"{WORD_START}(?:{body}){WORD_END}", re.IGNORECASE), option_of


def _form_pattern(form: str, cased: bool) -> str:
    """A form as a pattern: any spaces between its words, a plural "s" allowed ("Grays")."""
    pattern = r"\s+".join(re.escape(word) for word in form.split())
    if len(form) > 1 and form[-1].isalpha() and not cased:
        pattern += "(?:e?s)?"
    return f"(?-i:{pattern})" if cased else pattern


def _option_of_form(option_of: Mapping[str, str], form: str) -> str | None:
    """The option of a matched form, which may carry a plural "s" or "es"."""
    for candidate in (form, form[:-1], form[:-2]):
        if candidate in option_of:
            return option_of[candidate]
    return None


@functools.lru_cache(maxsize=256)
def _open_alias_map(task: TaskSpec) -> dict[str, str]:
    return {
        fold(form): fold(canonical)
        for canonical, forms in task.surface_forms().items()
        for form in forms
    }


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=64)
def _word_set(task: TaskSpec, key: str) -> frozenset[str]:
    """A word list param of the task (``english_words``, ``common_words``), folded."""
    return frozenset(fold(term) for term in task.params.get(key, ()))


@functools.lru_cache(maxsize=64)
def _not_names(task: TaskSpec) -> frozenset[str]:
    """Words that are no made-up name: the question's and chat's, and English words."""
    return _NOT_NAMES | _word_set(task, "english_words")


@functools.lru_cache(maxsize=64)
def _task_vocabulary(task: TaskSpec) -> Vocabulary | None:
    """The task's vocabulary with its aliases' forms, or None (any answer is of its kind)."""
    terms = task.params.get("vocabulary")
    if terms is None or task.params.get("category") == "any":
        return None
    aliases = tuple(form for forms in task.surface_forms().values() for form in forms)
    return vocabulary(tuple(terms) + aliases, bool(task.params.get("vocabulary_cased")))
