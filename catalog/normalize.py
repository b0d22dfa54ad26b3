"""Normalizers: map a model's completion text to one of a task's options, or to invalid.

Pure Python (no torch), so the core and the analysis can use it. A normalizer has a
``name`` (what task files refer to), a ``version`` (stored with every run; bump it whenever
the behaviour changes, so that counts normalized by different rules are never mixed
silently) and ``__call__(text, task) -> option | None``. ``None`` means invalid: the sample
is kept in the invalid bucket.

Rules shared by the closed-task normalizers ("integer", "choice", "letter"):

1. Base models complete the plain scaffold "Question: ...\\nAnswer:" and run on into the
   next turn (" 7\\nQuestion: ..."): everything from a line starting with "Question:" on is
   dropped.
2. Every answer-like token is a candidate: an integer or number word, a whole-word (or
   whole-phrase) match of an option or alias, a standalone letter. Matching is
   case-insensitive, markdown and quotes around a token don't matter.
3. One candidate is taken, by the first rule that finds one: a candidate alone on its line
   ("\\n\\n**7**\\n"); a candidate wrapped in bold/italics/backticks/quotes ("I'll pick **4**.");
   the first candidate after the last colon that has a candidate after it ("Sure! Here's a
   random number between 1 and 10: 7"); the earliest candidate.
4. The taken candidate is mapped to its canonical option (aliases: "H", "Heads." -> "heads"),
   or to ``None`` if it is not an option (out-of-range numbers).

Compiled patterns are cached per task, so a call costs a few regex scans of the text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from catalog.enums import INVALID_REASONS
from catalog.errors import InvalidInput

if TYPE_CHECKING:
    from catalog.tasks import TaskSpec

# A line starting with "Question:" is the scaffold's next turn, not the answer.
_NEXT_TURN = re.compile(r"^[ \t]*question[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Characters that decorate an answer without changing it: markdown, quotes, brackets, bullets.
_DECOR = " \t\r*_`\"'“”‘’«»()[]{}<>#~•·-"
_TRAILING_PUNCT = ".!?,;:"
_OPENERS = ("**", "__", "*", "_", "`", '"', "'", "“", "‘", "«")
_CLOSERS = ("**", "__", "*", "_", "`", '"', "'", "”", "’", "»")
# Token boundaries: not inside a word, and not after/before an in-word apostrophe ("don't").
_BEFORE = r"(?<!\w)(?<!\w['’])"
_AFTER = r"(?!\w)(?!['’]\w)"


@dataclass(frozen=True)
class Candidate:
    """An answer-like token of a completion: its span and the value it stands for."""

    start: int
    end: int
    value: str


def answer_region(text: str) -> str:
    """The part of a completion that can hold the answer (drops a scaffold's next turn)."""
    turn = _NEXT_TURN.search(text)
    return text[: turn.start()] if turn else text


def pick(text: str, candidates: list[Candidate]) -> Candidate | None:
    """Choose one candidate by the module's rule 3 (candidates in text order)."""
    if not candidates:
        return None
    for candidate in candidates:
        if alone_on_line(text, candidate):
            return candidate
    for candidate in candidates:
        if wrapped(text, candidate):
            return candidate
    colon = text.rfind(":", 0, candidates[-1].start)
    if colon >= 0:
        return next(c for c in candidates if c.start > colon)
    return candidates[0]


def alone_on_line(text: str, candidate: Candidate) -> bool:
    """Nothing but markdown, quotes and punctuation around the candidate on its line."""
    line_start = text.rfind("\n", 0, candidate.start) + 1
    line_end = text.find("\n", candidate.end)
    before = text[line_start : candidate.start]
    after = text[candidate.end : len(text) if line_end < 0 else line_end]
    return not before.strip(_DECOR) and not after.strip(_DECOR + _TRAILING_PUNCT)


def wrapped(text: str, candidate: Candidate) -> bool:
    """Bold, italics, backticks or quotes right around the candidate ("**7**.", "'Q'")."""
    before = text[: candidate.start]
    after = text[candidate.end :].lstrip(".!")
    return before.endswith(_OPENERS) and after.startswith(_CLOSERS)


class Reading(NamedTuple):
    """What a completion says: the option it gives, or (option None) why it gives none, one
    of :data:`catalog.enums.INVALID_REASONS`."""

    option: str | None
    reason: str | None = None

    @classmethod
    def invalid(cls, reason: str) -> Reading:
        assert reason in INVALID_REASONS, reason
        return cls(None, reason)


NO_ANSWER = Reading.invalid("no_answer")
AMBIGUOUS = Reading.invalid("ambiguous")
OFF_CATEGORY = Reading.invalid("off_category")
OUT_OF_RANGE = Reading.invalid("out_of_range")


class Normalizer:
    """Base class: a named, versioned reading of a completion text (an option, or why none).

    >>> from catalog.tasks import bundled_task
    >>> get_normalizer("choice").read("Tails!", bundled_task("coin"))
    Reading(option='tails', reason=None)
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]

    def read(self, text: str, task: TaskSpec) -> Reading:
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
    version = "1"
    description = "an integer in [min, max] (digits or words like 'seven'); out of range is invalid"

    _INTEGER = re.compile(r"(?<![\w.])(?<!\d,)-?\d+(?![\w]|[.,]\d)")
    # "between 1 and 10", "from 1 to 100", "1-10": restated ranges, not answers.
    _RANGE = re.compile(
        r"\b(?:between|from)\s+\S+\s+(?:and|to)\s+[\w-]+|(?<![\w.])\d+\s*(?:-|–|to)\s*\d+(?!\w)",
        re.IGNORECASE,
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
        rf"{_BEFORE}(?:(?:(?:a|one)\s+)?hundred(?:\s+(?:and\s+)?{_below_100})?|{_below_100})"
        rf"{_AFTER}",
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

    def read(self, text: str, task: TaskSpec) -> Reading:
        region = answer_region(text)
        masked = self._RANGE.sub(lambda m: " " * len(m.group()), region)
        candidates = [
            Candidate(m.start(), m.end(), m.group()) for m in self._INTEGER.finditer(masked)
        ]
        if not candidates:
            # Words only where no digits are written: "here's one: 3" is 3, not 1.
            candidates = [
                Candidate(m.start(), m.end(), str(self.word_value(m.group())))
                for m in self._WORDS.finditer(masked)
            ]
        chosen = pick(masked, candidates)
        if chosen is None:
            return NO_ANSWER
        value = int(chosen.value)
        low, high = self._bounds(task)
        option = str(value)
        if not low <= value <= high or option not in _option_set(task):
            return OUT_OF_RANGE
        return Reading(option)

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
    month, not "you may").
    """

    name = "choice"
    version = "1"
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

    def read(self, text: str, task: TaskSpec) -> Reading:
        pattern, option_of = _choice_matcher(task)
        region = answer_region(text)
        # A match whose case-fold is not a form's ("ı" matches "i" under IGNORECASE) is skipped.
        candidates = [
            Candidate(m.start(), m.end(), option_of[form])
            for m in pattern.finditer(region)
            if (form := _fold(m.group())) in option_of
        ]
        chosen = pick(region, candidates)
        return Reading(chosen.value) if chosen else NO_ANSWER


class LetterNormalizer(Normalizer):
    """One letter of the alphabet, without mistaking the article "a" or the pronoun "I"."""

    name = "letter"
    version = "1"
    description = "a single standalone letter (not the article 'a' or pronoun 'I' in a sentence)"

    # A standalone letter: not part of a word, a contraction ("I'm") or an abbreviation ("e.g.").
    _LETTER = re.compile(r"(?<!\w)(?<!\w['’.])[A-Za-z](?!\w)(?!['’]\w)(?!\.\w)")
    # "a" / "A" / "I" followed by a word are the article and the pronoun.
    _WORD_AFTER = re.compile(r"[ \t]+[A-Za-z]")
    _AFTER_COLON = re.compile(r":[\s*_`\"'“‘«]*\Z")
    _AFTER_LETTER = re.compile(r"\bletter[\s*_`\"'“‘«]*\Z", re.IGNORECASE)

    def check(self, task: TaskSpec) -> str | None:
        if task.kind != "closed":
            return "kind: the letter normalizer needs a closed task with letter options"
        for i, option in enumerate(task.options):
            if not re.fullmatch(r"[A-Za-z]", option):
                return f"options[{i}]: {option!r} is not a single letter"
        return None

    def read(self, text: str, task: TaskSpec) -> Reading:
        region = answer_region(text)
        candidates = [
            Candidate(m.start(), m.end(), m.group()) for m in self._LETTER.finditer(region)
        ]
        chosen = next((c for c in candidates if alone_on_line(region, c)), None)
        if chosen is None:
            chosen = next((c for c in candidates if self._emphasized(region, c)), None)
        if chosen is None:
            chosen = next((c for c in candidates if self._after_letter(region, c)), None)
        if chosen is None:
            chosen = next((c for c in candidates if not self._article_or_pronoun(region, c)), None)
        if chosen is None:
            return NO_ANSWER
        option = _option_set(task).get(chosen.value.casefold())
        return Reading(option) if option else OUT_OF_RANGE

    def _emphasized(self, text: str, candidate: Candidate) -> bool:
        """Bold/quoted or right after a colon ("Here is a random letter: Q")."""
        return wrapped(text, candidate) or bool(self._AFTER_COLON.search(text, 0, candidate.start))

    def _after_letter(self, text: str, candidate: Candidate) -> bool:
        """After the word "letter" ("the letter A is my pick")."""
        return bool(self._AFTER_LETTER.search(text, 0, candidate.start))

    def _article_or_pronoun(self, text: str, candidate: Candidate) -> bool:
        return candidate.value in "aAI" and bool(self._WORD_AFTER.match(text, candidate.end))


class OpenWordNormalizer(Normalizer):
    """The answer phrase of an open task ("Here's one: the Red Panda." -> "red panda").

    Takes the first line that is not a preamble ending in a colon, the text after that
    line's last colon or ellipsis, drops lead-ins ("I'll go with", "How about"), cuts at the first
    sentence or clause break, strips markdown, quotes, articles and punctuation and
    case-folds. Longer than ``params.max_words`` words (default 3) is invalid, as is a
    sentence starting like a refusal ("I'm sorry..."); ``params.keep_words`` keeps only
    the first words (first_name: 1, "Emily Johnson" -> "emily"). Aliases map other forms
    to a canonical answer.
    """

    name = "open_word"
    version = "1"
    description = "the answer phrase, case-folded, without preamble, articles or punctuation"

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

    def check(self, task: TaskSpec) -> str | None:
        if task.kind != "open":
            return "kind: the open_word normalizer is for open tasks (use choice for closed ones)"
        for key in ("max_words", "keep_words"):
            value = task.params.get(key)
            if value is not None and (type(value) is not int or value < 1):
                return f"params.{key}: must be a positive integer, got {value!r}"
        return None

    def read(self, text: str, task: TaskSpec) -> Reading:
        phrase = self._answer_line(answer_region(text))
        phrase = self._LEAD_IN.sub("", phrase.strip(_DECOR))
        phrase = self._BREAK.split(phrase, maxsplit=1)[0]
        phrase = self._EDGES.sub("", phrase.strip(_DECOR))
        phrase = self._ARTICLE.sub("", phrase)
        words = _fold(self._EDGES.sub("", phrase)).split()
        if not words or words[0] in self._REFUSAL_START:
            return NO_ANSWER
        if len(words) > task.params.get("max_words", 3):
            return NO_ANSWER
        keep = task.params.get("keep_words")
        answer = " ".join(words[:keep] if keep else words)
        if not any(ch.isalpha() for ch in answer):
            return NO_ANSWER
        return Reading(_open_alias_map(task).get(answer, answer))

    _PREAMBLE_END = re.compile(r":|\.\.\.|…")
    _NUMBERED = re.compile(r"^\s*\d+[.)]\s+")  # "1. Dog" in a numbered list

    @classmethod
    def _answer_line(cls, region: str) -> str:
        """The first line with an answer, after its last colon or ellipsis ("Hmm... Lion")."""
        for line in region.splitlines():
            answer = cls._PREAMBLE_END.split(cls._NUMBERED.sub("", line))[-1].strip(_DECOR)
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


class ReadCounts(NamedTuple):
    """Distinct completion texts read: counts per option and per invalid reason, and each
    text's reading."""

    options: dict[str, int]
    reasons: dict[str, int]
    readings: dict[str, Reading]

    @property
    def n_invalid(self) -> int:
        return sum(self.reasons.values())

    def reason_columns(self) -> dict[str, int]:
        """The run's ``n_<reason>`` columns (every reason, zero where none)."""
        return {f"n_{reason}": self.reasons.get(reason, 0) for reason in INVALID_REASONS}


def read_counts(read: Callable[[str], Reading], completions: Mapping[str, int]) -> ReadCounts:
    """Read each distinct completion text once and add up its count by option or reason."""
    options: dict[str, int] = {}
    reasons: dict[str, int] = {}
    readings: dict[str, Reading] = {}
    for text, count in completions.items():
        reading = readings[text] = read(text)
        if reading.option is not None:
            options[reading.option] = options.get(reading.option, 0) + count
        else:
            reasons[reading.reason] = reasons.get(reading.reason, 0) + count
    return ReadCounts(options, reasons, readings)


def _fold(form: str) -> str:
    return " ".join(form.casefold().split())


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
            option_of[_fold(form)] = option
            alternatives.append(form)
    alternatives.sort(key=len, reverse=True)
    body = "|".join(_form_pattern(form, form in cased) for form in alternatives)
    return re.compile(f"{_BEFORE}(?:{body}){_AFTER}", re.IGNORECASE), option_of


def _form_pattern(form: str, cased: bool) -> str:
    pattern = r"\s+".join(re.escape(word) for word in form.split())
    return f"(?-i:{pattern})" if cased else pattern


@functools.lru_cache(maxsize=256)
def _open_alias_map(task: TaskSpec) -> dict[str, str]:
    return {
        _fold(form): _fold(canonical)
        for canonical, forms in task.surface_forms().items()
        for form in forms
    }
