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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from catalog.enums import INVALID_REASONS
from catalog.errors import InvalidInput
from catalog.lexicon import Vocabulary, fold, vocabulary
from catalog.limits import text_max

if TYPE_CHECKING:
    from catalog.taskspec import TaskSpec

# Where the reply ends: the plain scaffold's next turn, a chat role line, a special token.
_NEXT_TURN = re.compile(
    r"^[ \t]*(?:question|user|human|assistant|instruction)[ \t]*:"
    r"|<\|[^|>\n]{1,40}\|>|<(?:start|end)_of_\w+>|</s>|<(?:eos|bos|pad|unk)>",
    re.IGNORECASE | re.MULTILINE,
)
# The longest answer an option column holds (the same on both databases).
LONGEST_ANSWER = text_max("option_counts.option")
# HTML tags a base model writes around words (<b>, <em>, </i>): markup, not text.
# Zero-width spaces and joiners separate words like a space (one character for one).
_ZERO_WIDTH = str.maketrans(dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff", " "))
_TAGS = re.compile(r"</?[A-Za-z]{1,6}>")
# Characters that decorate an answer without changing it: markdown, quotes, brackets, bullets.
_DECOR = " \t\r*_`\"'“”‘’«»()[]{}<>#~•·-"
_TRAILING_PUNCT = ".!?,;:"
_OPENERS = ("**", "__", "*", "_", "`", '"', "'", "“", "‘", "«")
_CLOSERS = ("**", "__", "*", "_", "`", '"', "'", "”", "’", "»")
# Token boundaries: not inside a word, and not after/before an in-word apostrophe ("don't").
_BEFORE = r"(?<!\w)(?<!\w['’])"
_AFTER = r"(?!\w)(?!['’]\w)"

# What may stand between two items of a list: separators, conjunctions, list labels
# ("A)", "2."), and nothing else ("heads or tails", "0 1 2 3", "purple. B red. C blue").
_SEP = r"[\s,;/|&+.:*•·\-–—()\[\]{}\"'`“”‘’«»!?]"
_LIST_GAP = re.compile(
    rf"{_SEP}*(?:(?:or|and|nor|and/or|vs|versus|then|to|through|either|maybe|perhaps|"
    rf"[A-Za-z]|\d{{1,3}}%?|[ivx]{{1,4}})(?!\w){_SEP}*)*\Z",
    re.IGNORECASE,
)
_MAX_LIST_GAP = 24
_NEGATION = re.compile(r"\b(?:not|never|no)\b", re.IGNORECASE)
_MODIFIER_BEFORE = re.compile(r"[A-Za-z]{1,10}[ \t]*\Z")
_LIST_JOIN = re.compile(r",|\b(?:or|and)\b|/")
_WORDS_IN_GAP = re.compile(r"[^\W\d_]{2,}")
# What introduces a list of possibilities (its items are not answers) and how far it reaches.
_LIST_INTRO = re.compile(
    r"\b(?:options?|choices|possibilities|possible (?:outcomes|answers|results|options)|"
    r"outcomes|choose from|pick from|select from|such as|for example|e\.g\.|"
    r"here are(?: some| a few)?|the following|in (?:\w+ )?order)\b",
    re.IGNORECASE,
)
_INTRO_SCOPE = 200
# "heads or ...", "either tails": one side of a disjunction.
_OR_AFTER = re.compile(r"[*_`\"'”’]*[ \t,]*\bor\b", re.IGNORECASE)
_EITHER_BEFORE = re.compile(r"\b(?:either|whether)[ \t]+[*_`\"'“‘]*\Z", re.IGNORECASE)
# The rest of a sentence that ends in a question mark.
_IN_QUESTION = re.compile(r"[^.!?\n]{4,}\?")
# A sentence that starts as a refusal, up to the candidate.
_IN_REFUSAL = re.compile(
    r"[ \t]*[*_\"'“‘]*(?:i'?m sorry|sorry|unfortunately|as an ai|as a language model|"
    r"i can(?:'|no)t|i'?m (?:not|unable))\b",
    re.IGNORECASE,
)
_SENTENCE_BREAK = re.compile(r"[.!?\n]")
# A sentence that talks about outcomes instead of giving one.
_HYPOTHETICAL = re.compile(r"\b(?:if|whether|probability|chance|chances|odds)\b",
                           re.IGNORECASE)
_LIST_LABEL = re.compile(r"[\s>*•·\-–—]*(?:\(?(?:\d{1,3}|[A-Za-z]|[ivx]{1,4})[.):]\s*)?[\s*_`\"'“‘«]*\Z")
# Said right before a candidate, these make it the answer ("The answer is", "I'll pick").
_DETERMINER = r"(?:(?:a|an|the|number|digit|letter|color|colour|option)\s+){0,2}"
# A short phrase between a verb of answering and its answer: "I drew [the queen of] clubs",
# "How about [a nice shade of] red" (not a negation: "I'd say not 7").
_PHRASE = r"(?:\s+(?!not\b|never\b|no\b)[A-Za-z'’-]+){0,4}?"
_STATED = re.compile(
    r"(?:\banswer\s*(?:(?:is|would be|will be|:|=|-)(?:\s+(?!not\b|never\b|no\b)[A-Za-z'’-]+){0,2}?)?"
    r"|\b(?:my|the|your|our|final|random|this|first)\s+(?:[\w-]+\s+){0,3}?"
    r"(?:answer|choice|pick|result|outcome|selection|guess|number|digit|letter|colou?r|"
    r"month|day|state|suit|roll|flip|toss|throw|move|animal|fruit|name|one)"
    r"(?:\s+(?:i|i'm|i've|we|you)(?:\s+[\w'’]+){0,3}?)?\s*"  # "the number I'm thinking of is"
    r"(?:is|was|would be|will be|:|=|-)"
    r"|\b(?:i|i'll|i will|i'd|i would|i'm going to|i am going to|let's|let me|we|we'll|you)\s+"
    r"(?:(?:just|would|will|randomly|also|rather)\s+)?"
    r"(?:go with|going with|pick|picked|choose|chose|select|selected|say|said|take|get|got|"
    r"roll|rolled|flip|flipped|draw|drew|throw|threw|play|think of|thought of|see|saw|"
    r"name|guess|call|suggest|recommend|have|had)\b" + _PHRASE +
    r"|\b(?:it's|it is|it was|that's|that is|which is|landed on|lands on|landed|comes up|came up|"
    r"shows|showed|rolled|got|here's|here is|how about|what about|"
    r"just kidding|i mean|no wait|make that|"  # a correction states the new answer
    r"(?:could|might|would|should|must|will) be|returns|returned|gives|gave|generated)\b"
    + _PHRASE +
    r"|:|\.\.\.|…"  # a colon: "Answer: 7", a JSON field '"digit": 7', a preamble's end
    rf")[\s*_`\"'“‘«=:,\-]*{_DETERMINER}[\s*_`\"'“‘«]*\Z",
    re.IGNORECASE,
)
_STATED_WINDOW = 80
# One or two words alone before a colon, at the start of their clause: a field's label.
_SHORT_LABEL = re.compile(
    r"(?:\A|[.!?\n{,(])[\s*_`\"'“‘#>•-]*([A-Za-z]+(?:[ \t]+[A-Za-z]+)?)[*_`\"'”’]*[ \t]*:"
    r"[\s*_`\"'“‘«]*\Z")
# Labels that hold an answer ("Answer:", "Die:", "My pick:", '"animal":').
_ANSWER_LABEL_WORDS = frozenset(
    "answer answers choice pick result outcome selection guess number digit letter color "
    "colour month day weekday state suit roll flip toss throw draw move animal fruit name "
    "die dice coin card value output response reply final random my your it chosen selected "
    "picked here i we me call choose chose say go get got drew rolled flipped".split())
# The end of a clause: "Tails." and "Tails, I think" start with their answer, "Heads has a
# 50% chance" does not.
_CLAUSE_END = re.compile(
    r"[*_`\"'”’)\]]*[ \t]*(?:[.!?,;:\n]|[-–—][ \t]|\Z)", re.IGNORECASE)
# A candidate followed by a colon is a label ("Heads: 50%", "here's one: 3"), not an answer.
_LABEL_AFTER = re.compile(r"[*_`\"'”’]*[ \t]*(?::(?!//)|=)[ \t]*[^\s]")
# A reply this short ("Seven.", "Heads!") is its own answer, even in a weak form.
_SHORT_REPLY_WORDS = 4
# A value mentioned once deep in a long reply is a mention, not an answer: the one value of
# a reply counts when it comes in its opening characters, or the reply is brief.
_OPENING = 60
_BRIEF_WORDS = 12
# ... and only where its sentence leads up to it in at most this many words: "Tails, I
# think" and "Okay, 7" are answers, "my phone be scissors" and "I am told that 1 is a
# natural number" are mentions (a stated answer, R4, needs no such limit).
_LEAD_IN_WORDS = 1


def _is_brief(region: str) -> bool:
    return len(region.split()) <= _BRIEF_WORDS
# Words of the question and of chat that are no made-up name, even with a capital.
_NOT_NAMES = frozenset(
    "answer question name names random first sure okay ok yes no hello hi hey thanks "
    "certainly absolutely great".split())
# A reply opening with a capitalized name and another capitalized word after it
# ("Mala Alex", "Abu Abd"), or with one capitalized word that runs two together ("HailyAbadanna").
_FULL_NAME = re.compile(r"[\s*_`\"'“‘]*([A-Z][a-z]+(?:[A-Z][a-z]+)*)(?:([ \t]+[A-Z][a-z]))?")
# The rest of a full name, then a comma and another capitalized word.
_NAME_LIST = re.compile(r"[A-Za-z'’-]*(?:[ \t]+[A-Z][A-Za-z'’-]*)*[ \t]*,[ \t]*[A-Z]")
_CAMEL_BREAK = re.compile(r"(?<=[a-z])(?=[A-Z])")
# The reply's first word, as a clause of its own ("Hyla...", "Zephyrine!").
_FIRST_WORD = re.compile(r"[\s*_`\"'“‘]*([^\W\d_]+(?:-[^\W\d_]+)?)[*_`\"'”’]*"
                         r"[ \t]*(?:[.!?,;\n…]|\Z)")


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


@dataclass(frozen=True)
class Candidate:
    """An answer-like token of a completion: its span, the value it stands for, and whether
    it is a weak form (a number word, a one-letter alias) that counts only when singled out."""

    start: int
    end: int
    value: str
    weak: bool = False
    # "one" is mostly a pronoun ("let me pick one"): stated does not single it out.
    pronoun: bool = False


def answer_region(text: str) -> str:
    """The part of a completion that can hold the answer (drops a next turn)."""
    turn = _NEXT_TURN.search(text)
    region = (text[: turn.start()] if turn else text).translate(_ZERO_WIDTH)
    return _TAGS.sub(lambda m: " " * len(m.group()), region)


def decide(region: str, candidates: Sequence[Candidate],
           to_option: Callable[[str], Reading], lenient: bool = False) -> Reading:
    """Rules 3-5: the one candidate that is the answer, mapped by ``to_option``, or why
    there is none. ``candidates`` are in text order. ``lenient``: the rules before
    version 2 instead (:func:`pick_lenient`)."""
    if lenient:
        chosen = pick_lenient(region, candidates)
        return to_option(chosen.value) if chosen else NO_ANSWER
    candidates = [c for c in candidates if not _LABEL_AFTER.match(region, c.end)]
    if not candidates:
        return NO_ANSWER
    listed = listed_candidates(region, candidates) | set_aside(region, candidates)
    free = [c for i, c in enumerate(candidates) if i not in listed]
    for singled_out in (stated, alone_on_line, wrapped):
        values = _distinct(c.value for c in free
                           if singled_out(region, c) and not (c.pronoun and singled_out is stated))
        if len(values) == 1:
            return to_option(values[0])
        if len(values) > 1:
            return AMBIGUOUS
    short = len(region.split()) <= _SHORT_REPLY_WORDS
    opening = len(region) - len(region.lstrip()) + _OPENING
    values = _distinct(c.value for c in free
                       if (short or not c.weak) and (c.start < opening or _is_brief(region))
                       and (short or _lead_in_words(region, c) <= _LEAD_IN_WORDS)
                       and not _other_label(region[max(0, c.start - _STATED_WINDOW):c.start]))
    if len(values) == 1:
        return to_option(values[0])
    return AMBIGUOUS if len(values) > 1 else NO_ANSWER


def _lead_in_words(region: str, candidate: Candidate) -> int:
    """How many words its sentence has before the candidate ("my phone be scissors": 3)."""
    before = region[max(0, candidate.start - _STATED_WINDOW) : candidate.start]
    sentence = _SENTENCE_BREAK.split(before)[-1]
    return len(_WORDS_IN_GAP.findall(sentence))


def pick_lenient(region: str, candidates: Sequence[Candidate]) -> Candidate | None:
    """The rules of the normalizers before version 2, kept to show how much a conclusion
    depends on parsing: no list is set aside and nothing is ambiguous; the first candidate
    alone on its line, else wrapped, else the first after the last colon, else the earliest
    wins (weak forms only where no other candidate is)."""
    strong = [c for c in candidates if not c.weak]
    candidates = strong or list(candidates)
    if not candidates:
        return None
    for singled_out in (alone_on_line, wrapped):
        chosen = next((c for c in candidates if singled_out(region, c)), None)
        if chosen is not None:
            return chosen
    colon = region.rfind(":", 0, candidates[-1].start)
    return next((c for c in candidates if c.start > colon), candidates[0])


def listed_candidates(region: str, candidates: Sequence[Candidate]) -> set[int]:
    """Indices of the candidates in a list of two or more different values (rule 3)."""
    listed: set[int] = set()
    run = [0]
    for i in range(1, len(candidates) + 1):
        if i < len(candidates) and _list_gap(region, candidates[i - 1], candidates[i]):
            run.append(i)
            continue
        if len({candidates[j].value for j in run}) > 1:
            listed.update(run)
        run = [i]
    return listed


def set_aside(region: str, candidates: Sequence[Candidate]) -> set[int]:
    """Indices of candidates that are not answers by their context: after a list's
    introduction ("Options:", "such as", "possible outcomes"), in a disjunction ("heads
    or", "either tails"), in a hypothetical ("if it lands heads", "the chance of tails")."""
    starts = [m.end() for m in _LIST_INTRO.finditer(region)]
    aside = set()
    for i, c in enumerate(candidates):
        if any(0 <= c.start - end <= _INTRO_SCOPE for end in starts):
            aside.add(i)
            continue
        before = region[max(0, c.start - _STATED_WINDOW) : c.start]
        sentence = _SENTENCE_BREAK.split(before)[-1]
        if _OR_AFTER.match(region, c.end) or _EITHER_BEFORE.search(before):
            aside.add(i)
        elif _HYPOTHETICAL.search(_SENTENCE_BREAK.split(region[max(0, c.start - _INTRO_SCOPE) :
                                                                 c.start])[-1]):
            aside.add(i)
        elif (_IN_QUESTION.match(region, c.end) or _IN_REFUSAL.match(sentence)) and not stated(
            region, c
        ):
            aside.add(i)  # "Are you asking me for a roll of 2 dice?", "I'm sorry for the bug"
    return aside


def _list_gap(region: str, left: Candidate, right: Candidate) -> bool:
    """Only list punctuation between two candidates (and at most one word where a comma or
    a conjunction says it is a list: "Black, dark red"); across lines, both are list items."""
    gap = region[left.end : right.start]
    if len(gap) > _MAX_LIST_GAP:
        return False
    if not _LIST_GAP.match(gap):
        # "Black, dark red": one word more where a comma or a conjunction makes it a list;
        # "Tuesday, John, Martin, Friday": a few words between commas of a long list.
        modified = _MODIFIER_BEFORE.sub("", gap)
        one_word = (modified != gap and _LIST_JOIN.search(gap) and _LIST_GAP.match(modified)
                    and not _NEGATION.search(gap))  # "21, not 1 or 2": a correction
        few_words = gap.count(",") >= 2 and len(_WORDS_IN_GAP.findall(gap)) <= 3
        if not (one_word or few_words):
            return False
    return "\n" not in gap or (list_item(region, left) and list_item(region, right))


def list_item(text: str, candidate: Candidate) -> bool:
    """Alone on its line but for a list label ("2. Cat", "- heads", "(b) red")."""
    line_start = text.rfind("\n", 0, candidate.start) + 1
    line_end = text.find("\n", candidate.end)
    before = text[line_start : candidate.start]
    after = text[candidate.end : len(text) if line_end < 0 else line_end]
    return bool(_LIST_LABEL.match(before)) and not after.strip(_DECOR + _TRAILING_PUNCT)


def stated(text: str, candidate: Candidate) -> bool:
    """Said as the answer: after "answer is", "I pick", a colon, a JSON key, or first in
    the reply."""
    before = text[max(0, candidate.start - _STATED_WINDOW) : candidate.start]
    if not text[: candidate.start].strip(_DECOR):  # the reply starts with it, as a clause
        return bool(_CLAUSE_END.match(text, candidate.end))
    return bool(_STATED.search(before)) and not _other_label(before)


def _other_label(before: str) -> bool:
    """A field of something else right before the value: "Given:6", "Operation: 1" (a short
    label of its own clause, no word of answering or of the task's kind in it)."""
    label = _SHORT_LABEL.search(before)
    return bool(label) and not _ANSWER_LABEL_WORDS.intersection(
        label.group(1).casefold().split())


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


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(values))


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

    _INTEGER = re.compile(r"(?<![\w.])(?<!\d,)-?\d+(?![\w]|[.,]\d)")
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
        r"|\b\d+\s*(?:thousand|million|billion|trillion)\b",  # "17 million" is no 17
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

    def read(self, text: str, task: TaskSpec, lenient: bool = False) -> Reading:
        region = answer_region(text)
        masked = self._MENTIONS.sub(lambda m: " " * len(m.group()), region)
        # "0000" or "07" is not written as an option: its value is kept as written.
        candidates = [
            Candidate(m.start(), m.end(), m.group().lstrip("-") if m.group().lstrip("-")[:1] == "0"
                      and len(m.group().lstrip("-")) > 1 else str(int(m.group())))
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
    # "a" / "A" / "I" followed by a word are the article and the pronoun.
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
        return match.group() in "aAI" and bool(self._WORD_AFTER.match(text, match.end()))


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
            candidates = self._made_up_opening(region, task, terms) + candidates
        if candidates:
            return decide(region, candidates, Reading)
        if not phrase and not (task.params.get("unlisted") == "accept"
                               and _FIRST_WORD.match(region)):
            return NO_ANSWER
        if task.params.get("unlisted") == "accept":
            # A made-up name is no English word ("Call it Tiger", "Smuggler" are words).
            words = _NOT_NAMES | _word_set(task, "english_words")
            first = _FIRST_WORD.match(region)
            if first and first.group(1)[0].isupper() and fold(first.group(1)) not in words:
                return Reading(fold(first.group(1)))  # "Hyla... please feel free"
            if phrase and phrase not in words and self._looks_like_a_name(region, phrase):
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

    def _made_up_opening(self, region: str, task: TaskSpec, terms: Vocabulary) -> list[Candidate]:
        """A made-up name that opens the reply as a clause of its own is a candidate beside
        the listed ones (" Illeth\nAnswer: Ben" gives two answers)."""
        first = _FIRST_WORD.match(region)
        if first is None or not first.group(1)[0].isupper():
            return []
        name = fold(first.group(1))
        words = _NOT_NAMES | _word_set(task, "english_words")
        if name in terms or any(part in words for part in name.split("-")):  # "Ex-cop"
            return []
        return [Candidate(first.start(1), first.end(1), name)]

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
        if len(name) < 2 or name in _NOT_NAMES | _word_set(task, "english_words"):
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
        phrase = self._LEAD_IN.sub("", phrase.strip(_DECOR))
        phrase = self._BREAK.split(phrase, maxsplit=1)[0]
        phrase = self._EDGES.sub("", phrase.strip(_DECOR))
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
    return re.compile(f"{_BEFORE}(?:{body}){_AFTER}", re.IGNORECASE), option_of


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
def _word_set(task: TaskSpec, key: str) -> frozenset[str]:
    """A word list param of the task (``english_words``, ``common_words``), folded."""
    return frozenset(fold(term) for term in task.params.get(key, ()))


@functools.lru_cache(maxsize=64)
def _task_vocabulary(task: TaskSpec) -> Vocabulary | None:
    """The task's vocabulary with its aliases' forms, or None (any answer is of its kind)."""
    terms = task.params.get("vocabulary")
    if terms is None or task.params.get("category") == "any":
        return None
    aliases = tuple(form for forms in task.surface_forms().values() for form in forms)
    return vocabulary(tuple(terms) + aliases, bool(task.params.get("vocabulary_cased")))
