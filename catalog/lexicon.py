"""Vocabularies of open tasks: which words name a thing of the task's kind.

An open task (animal, fruit, first name) can ship a vocabulary, one canonical term a line
(``catalog/tasks/vocabularies/animal.txt``). :class:`Vocabulary` finds its terms in a text,
longest first, in singular or plural ("red pandas" -> "red panda", "mice" -> "mouse"),
case-insensitively or (``cased``) only where written with a capital ("Will", not "will").

Matching looks words up in a dict (no regular expression over thousands of terms), so a
completion costs a few microseconds a word.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Words, with inner apostrophes or hyphens ("t-rex", "o'brien"); digits split words.
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Irregular plurals of words that end animal, fruit and people terms.
_IRREGULAR = {
    "mouse": "mice", "louse": "lice", "goose": "geese", "ox": "oxen", "tooth": "teeth",
    "foot": "feet", "child": "children", "person": "people", "man": "men", "woman": "women",
    "cactus": "cacti", "octopus": "octopuses",
}


@dataclass(frozen=True)
class Match:
    """A vocabulary term found in a text: its span and canonical form."""

    start: int
    end: int
    term: str


def fold(text: str) -> str:
    """Case-folded, single-spaced, typographic apostrophes made plain, accents dropped
    ("Zoë" -> "zoe")."""
    text = text.casefold().replace("’", "'")
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(text.split())


def plurals(term: str) -> set[str]:
    """The plural forms of a term (its last word inflected): "red panda" -> "red pandas"."""
    head, _, last = term.rpartition(" ")
    prefix = f"{head} " if head else ""
    forms = {last + "s", last + "es"}
    if last in _IRREGULAR:
        forms.add(_IRREGULAR[last])
    if last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        forms.add(last[:-1] + "ies")
    if last.endswith("f"):
        forms.add(last[:-1] + "ves")
    if last.endswith("fe"):
        forms.add(last[:-2] + "ves")
    return {prefix + form for form in forms}


class Vocabulary:
    """A set of canonical terms that can be found in text.

    >>> animals = Vocabulary(["cat", "red panda", "mouse"])
    >>> [m.term for m in animals.find("Two Red Pandas and three mice chased a cat.")]
    ['red panda', 'mouse', 'cat']
    """

    def __init__(self, terms: Iterable[str], *, cased: bool = False) -> None:
        self.cased = cased
        self.forms: dict[str, str] = {}
        canonical = {fold(term) for term in terms if term.strip()}
        # Names have no plurals: folding "This" to the name "Thi" would read a sentence as one.
        for term in sorted(canonical) if not cased else ():
            for form in plurals(term):
                self.forms.setdefault(form, term)
        for term in canonical:  # a term is always itself, even where it is another's plural
            self.forms[term] = term
        # the longest form (in words) that starts with each first word
        self.longest: dict[str, int] = {}
        for form in self.forms:
            first, *rest = form.split(" ")
            self.longest[first] = max(self.longest.get(first, 0), len(rest) + 1)

    def __contains__(self, phrase: str) -> bool:
        return fold(phrase) in self.forms

    def canonical(self, phrase: str) -> str | None:
        """The term a phrase names, or None ("Cats" -> "cat")."""
        return self.forms.get(fold(phrase))

    def find(self, text: str) -> list[Match]:
        """The terms in ``text``, left to right, the longest at each place."""
        words = list(_WORD.finditer(text))
        folded = [fold(w.group()) for w in words]
        # a term's words are separated by spaces only
        joined = [not text[a.end() : b.start()].strip() for a, b in _pairs(words)]
        found = []
        i = 0
        while i < len(words):
            n = self._longest_at(words, folded, joined, i)
            if n:
                term = self.forms.get(" ".join(folded[i : i + n])) or folded[i]
                found.append(Match(words[i].start(), words[i + n - 1].end(), term))
                i += n
            else:
                i += 1
        return found

    def _longest_at(self, words: list[re.Match], folded: list[str], joined: list[bool],
                    i: int) -> int:
        """How many words from ``i`` on make the longest term (0: none)."""
        if self.cased and not _capitalized(words[i].group()):
            return 0
        for n in range(min(self.longest.get(folded[i], 0), len(words) - i), 0, -1):
            if all(joined[i : i + n - 1]) and " ".join(folded[i : i + n]) in self.forms:
                return n
        word = folded[i]
        if self.cased and "-" in word and word.split("-")[0] in self.forms:
            return 1  # a name: "Jean-Luc"
        return 0


def _capitalized(word: str) -> bool:
    """Written like a name: "Olivia", "Jean-Luc", not "olivia" or the acronym "AI"."""
    return word[0].isupper() and (len(word) == 1 or not word.isupper())


def _pairs(items: list) -> Iterator[tuple]:
    return zip(items, items[1:], strict=False)


@functools.lru_cache(maxsize=64)
def vocabulary(terms: tuple[str, ...], cased: bool = False) -> Vocabulary:
    """A cached :class:`Vocabulary` (tasks keep their terms as a tuple)."""
    return Vocabulary(terms, cased=cased)


def read_vocabulary_text(text: str) -> list[str]:
    """The terms of a vocabulary file's text: one a line; blank lines and "#" comments
    skipped."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
