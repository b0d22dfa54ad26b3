"""How a task's prompt text reaches a model.

Chat stages get the prompt as one user message through the tokenizer's own chat template
(with the generation prompt appended). Plain-text stages (base models) get it inside a fixed
completion scaffold; the rendered text is stored with every run, so the scaffold is part of
the provenance.
"""

from __future__ import annotations

import hashlib

# The answer is expected right after "Answer:", e.g. " 7" then a newline or end of text.
PLAIN_SCAFFOLD = "Question: {prompt}\nAnswer:"
# Its name and version: part of every run's sampling condition (catalog.conditions).
PLAIN_SCAFFOLD_NAME = "qa@1"


def render_plain(prompt: str) -> str:
    return PLAIN_SCAFFOLD.format(prompt=prompt)


def render_chat(tokenizer, prompt: str) -> str:
    """The prompt as the first user turn, through the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def render(tokenizer, prompt: str, prompt_format: str) -> str:
    """Render ``prompt`` for a model whose registry prompt format is "chat" or "plain"."""
    if prompt_format == "chat":
        return render_chat(tokenizer, prompt)
    return render_plain(prompt)


def text_hash(text: str) -> str:
    """SHA-256 hex digest of a text (prompt templates, rendered prompts, chat templates)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
