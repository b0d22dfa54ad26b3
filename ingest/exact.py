"""Exact mode: the probability of each option, computed from the model instead of sampled.

An option's probability is the sum, over its surface forms, of the probability that the
model's answer is exactly that text and then ends (log-likelihood scoring, as in
lm-evaluation-harness):

- a surface form is scored as the continuation of the rendered prompt, tokenized in context
  (the tokens of ``rendered + form`` after the prompt's own tokens; if the tokenizer merges
  across the boundary so the prompt's tokens are not a prefix, the form is tokenized alone);
  only this canonical tokenization is scored: other tokenizations of the same text, which a
  model rarely produces, are left out (they lower ``covered_mass`` a little);
- the answer must then end: with any EOS token of the model (chat prompts), or, for plain
  prompts (base models continue the "Question: ... Answer:" scaffold line by line), with any
  EOS token or a newline (``form + "\\n"`` in context). These endings are distinct token
  sequences, so their probabilities add;
- exact mode scores the model's own distribution (temperature 1, no top-k/top-p); sampling
  parameters do not apply.

The returned :class:`~ingest.backends.ExactDistribution` holds the option probabilities
renormalized over the options and ``covered_mass``, the total probability of all scored
forms (<= 1). The prompt is prefilled once; all continuations then run as one right-padded
batched forward pass over the prompt's cache expanded to one row per continuation (right
padding needs no attention mask: a real token never attends to a later pad).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence

from ingest.backends import ExactDistribution, check_surface_forms, renormalize
from ingest.sampling import cache_argument, encode_prompt

ROWS_PER_BATCH = 64


def default_surface_forms(
    options: Iterable[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
    prompt_format: str = "chat",
) -> dict[str, list[str]]:
    """Surface forms to score per option: the option and its aliases, each also capitalized,
    and for plain prompts each also after a space (``"Answer: 7"`` continues with ``" 7"``).

    A form that two options would share is kept by the first option only.
    """
    aliases = aliases or {}
    forms: dict[str, list[str]] = {}
    seen: set[str] = set()
    for option in options:
        texts = [option, *aliases.get(option, ())]
        texts += [t[:1].upper() + t[1:] for t in texts]
        if prompt_format == "plain":
            texts += [" " + t for t in texts]
        forms[option] = [t for t in dict.fromkeys(texts) if t not in seen]
        seen.update(forms[option])
    return forms


def continuation_ids(tokenizer, rendered: str, prompt_ids: Sequence[int], text: str) -> list[int]:
    """Tokens of ``text`` as it continues ``rendered`` (in context; see the module docstring)."""
    full = encode_prompt(tokenizer, rendered + text)
    if full[: len(prompt_ids)] == list(prompt_ids) and len(full) > len(prompt_ids):
        return full[len(prompt_ids) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def option_probabilities(
    model,
    tokenizer,
    rendered: str,
    options: Mapping[str, Sequence[str]],
    *,
    eos_token_ids: Sequence[int],
    newline_ends_answer: bool = False,
) -> ExactDistribution:
    """Exact option probabilities of a rendered prompt (see the module docstring)."""
    import torch

    prompt_ids = encode_prompt(tokenizer, rendered)
    # (option, continuation tokens, whether an EOS token must follow)
    scored: list[tuple[str, list[int], bool]] = []
    for option, forms in check_surface_forms(options).items():
        for form in forms:
            scored.append((option, continuation_ids(tokenizer, rendered, prompt_ids, form), True))
            if newline_ends_answer:
                newline_form = continuation_ids(tokenizer, rendered, prompt_ids, form + "\n")
                scored.append((option, newline_form, False))
    with torch.inference_mode():
        logprobs = sequence_logprobs(
            model, prompt_ids, [(ids, eos) for _, ids, eos in scored], eos_token_ids
        )
    raw = dict.fromkeys(options, 0.0)
    for (option, _, _), logprob in zip(scored, logprobs.tolist()):
        raw[option] += math.exp(logprob)
    return renormalize(raw)


def sequence_logprobs(
    model, prompt_ids, continuations, eos_token_ids, rows_per_batch=ROWS_PER_BATCH
):
    """log P(continuation [then any EOS] | prompt) for each ``(token ids, needs_eos)``.

    Float64 sums of float32 log-softmax values; the prompt is run once and its cache is
    expanded to the rows of each batch.
    """
    import torch
    from transformers import DynamicCache

    device = model.device
    cache_kwarg = cache_argument(model)
    prompt_cache = DynamicCache(config=model.config)
    prompt = torch.tensor([prompt_ids], device=device)
    output = model(input_ids=prompt, use_cache=True, **{cache_kwarg: prompt_cache})
    first = torch.log_softmax(output.logits[0, -1].float(), dim=-1)
    eos = torch.tensor(list(eos_token_ids), device=device)
    results = []
    for start in range(0, len(continuations), rows_per_batch):
        batch = continuations[start : start + rows_per_batch]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, (tokens, _) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        cache = _expanded(prompt_cache, len(batch))
        logits = model(input_ids=ids, use_cache=True, **{cache_kwarg: cache}).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # logp[r, j] predicts token j + 1
        for row, (tokens, needs_eos) in enumerate(batch):
            n = len(tokens)
            total = first[tokens[0]].double()
            if n > 1:
                targets = torch.tensor(tokens[1:], device=device)
                total = (
                    total + logp[row, torch.arange(n - 1, device=device), targets].double().sum()
                )
            if needs_eos:
                total = total + torch.logsumexp(logp[row, n - 1, eos], dim=0).double()
            results.append(total)
    return torch.stack(results).cpu()


def _expanded(prompt_cache, rows: int):
    """A copy of a one-row prompt cache repeated to ``rows`` rows (the original is kept)."""
    cache = copy.copy(prompt_cache)
    cache.layers = [copy.copy(layer) for layer in prompt_cache.layers]
    cache.batch_repeat_interleave(rows)
    return cache
