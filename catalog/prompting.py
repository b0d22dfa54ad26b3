"""How a task's prompt text reaches a model.

Chat stages get the prompt as one user message through the tokenizer's own chat template
(with the generation prompt appended). Plain-text stages (base models) get it inside a
completion *scaffold*: a named, versioned template (:data:`SCAFFOLDS`) that a task file
(``scaffold = "fewshot"``) or ``catalog ingest --scaffold NAME`` may choose; the default is
``qa@1``. The scaffold's id is part of every run's sampling condition
(:mod:`catalog.conditions`), and the rendered text is stored with every run.

A scaffold's text never changes: a changed text is a new version (``fewshot@2``), so runs
rendered with different texts never share a condition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from catalog.errors import InvalidInput


@dataclass(frozen=True)
class Scaffold:
    """A plain-text completion template with one ``{prompt}`` slot; the answer is expected
    right after its final "Answer:", e.g. " 7" then a newline or the end of the text."""

    name: str
    version: int
    template: str
    description: str

    @property
    def id(self) -> str:
        """``name@version``, as stored in a run's condition."""
        return f"{self.name}@{self.version}"

    def render(self, prompt: str) -> str:
        return self.template.format(prompt=prompt)


# Few-shot examples answer questions that no bundled task asks (no digits, colors, names,
# animals...), so they show the one-short-answer format without priming an option.
_FEWSHOT_EXAMPLES = (
    ("Name a planet of the solar system.", "Jupiter"),
    ("Name a musical instrument.", "violin"),
    ("Name a chess piece.", "bishop"),
)
SCAFFOLDS: tuple[Scaffold, ...] = (
    Scaffold("qa", 1, "Question: {prompt}\nAnswer:", "one question, then 'Answer:'"),
    Scaffold(
        "fewshot", 1,
        "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in _FEWSHOT_EXAMPLES)
        + "Question: {prompt}\nAnswer:",
        "three answered questions on other topics, then the question",
    ),
)
DEFAULT_SCAFFOLD = "qa@1"
# The default's template and id under their historical names (toy lab, migrations' tests).
PLAIN_SCAFFOLD = SCAFFOLDS[0].template
PLAIN_SCAFFOLD_NAME = DEFAULT_SCAFFOLD


def get_scaffold(name: str | None = None) -> Scaffold:
    """The scaffold ``name@version``, the newest version of ``name``, or (None) the default."""
    wanted = DEFAULT_SCAFFOLD if name is None else name.strip()
    base, _, version = wanted.partition("@")
    matches = [s for s in SCAFFOLDS
               if s.name == base and (not version or str(s.version) == version)]
    if not matches:
        known = "; ".join(f"{s.id} ({s.description})" for s in SCAFFOLDS)
        raise InvalidInput(f"unknown scaffold {name!r}; the scaffolds are: {known}")
    return max(matches, key=lambda s: s.version)


def render_plain(prompt: str, scaffold: str | None = None) -> str:
    return get_scaffold(scaffold).render(prompt)


def render_chat(tokenizer, prompt: str) -> str:
    """The prompt as the first user turn, through the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def render(tokenizer, prompt: str, prompt_format: str, scaffold: str | None = None) -> str:
    """Render ``prompt`` for a model whose registry prompt format is "chat" or "plain"
    (plain: inside ``scaffold``, default :data:`DEFAULT_SCAFFOLD`)."""
    if prompt_format == "chat":
        return render_chat(tokenizer, prompt)
    return render_plain(prompt, scaffold)


def text_hash(text: str) -> str:
    """SHA-256 hex digest of a text (prompt templates, rendered prompts, chat templates)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
