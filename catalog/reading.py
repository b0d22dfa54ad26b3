"""How a completion is read: the rules of docs/normalization.md that every normalizer shares.

A normalizer (catalog/normalize.py) finds a task's candidates in a reply (its options, numbers,
letters or vocabulary terms); :func:`decide` picks the one that is the answer, by the rules
listed in catalog/normalize.py's docstring, or says why there is none (:class:`Reading`).
Pure Python, no state: the patterns are compiled once.

    >>> region = answer_region("I pick 7, not 3.\\nQuestion: again?")
    >>> region
    'I pick 7, not 3.\\n'
    >>> decide(region, [Candidate(7, 8, "7"), Candidate(14, 15, "3")], Reading)
    Reading(option='7', reason=None)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from catalog.enums import INVALID_REASONS

# Where the reply ends: the plain scaffold's next turn, a chat role line, a special token.
_NEXT_TURN = re.compile(
    r"^[ \t]*(?:question|user|human|assistant|instruction)[ \t]*:"
    r"|<\|[^|>\n]{1,40}\|>|<(?:start|end)_of_\w+>|</s>|<(?:eos|bos|pad|unk)>",
    re.IGNORECASE | re.MULTILINE,
)
# HTML tags a base model writes around words (<b>, <em>, </i>): markup, not text.
# Zero-width spaces and joiners separate words like a space (one character for one).
_ZERO_WIDTH = str.maketrans(dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff", " "))
_TAGS = re.compile(r"</?[A-Za-z]{1,6}>")
# Characters that decorate an answer without changing it: markdown, quotes, brackets, bullets.
DECOR = " \t\r*_`\"'“”‘’«»()[]{}<>#~•·-"
_TRAILING_PUNCT = ".!?,;:"
_OPENERS = ("**", "__", "*", "_", "`", '"', "'", "“", "‘", "«")
_CLOSERS = ("**", "__", "*", "_", "`", '"', "'", "”", "’", "»")
# Token boundaries: not inside a word, and not after/before an in-word apostrophe ("don't").
WORD_START = r"(?<!\w)(?<!\w['’])"
WORD_END = r"(?!\w)(?!['’]\w)"

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
    r"here are(?: some| a few)?|the following|in (?:\w+ )?order|possible values|"
    r"(?:pick|choose|select) one of|multiple choice|can include|including)\b",
    re.IGNORECASE,
)
_INTRO_SCOPE = 200
# A list cut by the token budget right after the candidate, at its next item's label:
# "(a) 6\n(b", "1. 5\n2.".
_CUT_LIST_AFTER = re.compile(
    r"[*_`\"'”’)\]]*[ \t]*\n[ \t]*(?:[(\[][A-Za-z0-9][.)\]]?|[A-Za-z0-9][.)\]])[ \t]*\Z")
# A value the sentence makes a condition of: "(heads if the coin is a 4 or tails if".
_CONDITION_AFTER = re.compile(r"[*_`\"'”’]*[ \t]+(?:if|when|unless)\b", re.IGNORECASE)
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
_NOT_THE_ANSWER = frozenset("alternate alternative another other example sample wrong".split())
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
_LABEL_AFTER = re.compile(r"[*_`\"'”’]*[ \t]*(?::(?!//)|=)[ \t]*(?:[^\s]|\n)")
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
    # a label ("Heads: 50%") or the value of another field ("Given:6") is no candidate
    candidates = [c for c in candidates if not _LABEL_AFTER.match(region, c.end)
                  and not _other_label(region[max(0, c.start - _STATED_WINDOW) : c.start])]
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
                       and _lead_in_words(region, c) <= _LEAD_IN_WORDS)
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
        if (_OR_AFTER.match(region, c.end) or _EITHER_BEFORE.search(before)
                or _CUT_LIST_AFTER.match(region, c.end) or _CONDITION_AFTER.match(region, c.end)):
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
    return bool(_LIST_LABEL.match(before)) and not after.strip(DECOR + _TRAILING_PUNCT)


def stated(text: str, candidate: Candidate) -> bool:
    """Said as the answer: after "answer is", "I pick", a colon, a JSON key, or first in
    the reply."""
    before = text[max(0, candidate.start - _STATED_WINDOW) : candidate.start]
    if not text[: candidate.start].strip(DECOR):  # the reply starts with it, as a clause
        return bool(_CLAUSE_END.match(text, candidate.end))
    return bool(_STATED.search(before))


def _other_label(before: str) -> bool:
    """A field of something else right before the value: "Given:6", "Operation: 1" (a short
    label of its own clause, no word of answering or of the task's kind in it)."""
    label = _SHORT_LABEL.search(before)
    if not label:
        return False
    words = set(label.group(1).casefold().split())
    # "Alternate answer:", "Example answer:" hold an answer, but not the one given
    return not _ANSWER_LABEL_WORDS.intersection(words) or bool(_NOT_THE_ANSWER & words)


def alone_on_line(text: str, candidate: Candidate) -> bool:
    """Nothing but markdown, quotes and punctuation around the candidate on its line."""
    line_start = text.rfind("\n", 0, candidate.start) + 1
    line_end = text.find("\n", candidate.end)
    before = text[line_start : candidate.start]
    after = text[candidate.end : len(text) if line_end < 0 else line_end]
    return not before.strip(DECOR) and not after.strip(DECOR + _TRAILING_PUNCT)


def wrapped(text: str, candidate: Candidate) -> bool:
    """Bold, italics, backticks or quotes right around the candidate ("**7**.", "'Q'")."""
    before = text[: candidate.start]
    after = text[candidate.end :].lstrip(".!")
    return before.endswith(_OPENERS) and after.startswith(_CLOSERS)


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(values))
