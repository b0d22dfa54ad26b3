"""Training a toy family: its word-level tokenizer, the soft-target and DPO losses, the loop.

torch and transformers are imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models

from catalog.prompting import render, render_plain
from catalog.tasks import TaskSpec
from catalog.toylab.settings import PlantedTask, ToyFamilySettings, ToyStage

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# One user turn renders as "<|user|> {content} <|assistant|>"; an assistant turn ends in eos.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} "
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# How text splits into the toy vocabulary's tokens: runs of word characters, and every other
# character on its own (spaces and newlines included), so decoding is plain concatenation
# and every text round-trips exactly, as the samplers and exact mode assume.
WORDS = pre_tokenizers.Split(Regex(r"\w+|\W"), behavior="isolated")
# What comes between the rendered prompt and the option in a training text: the plain
# scaffold's "Answer:" is followed by " 7"; a chat answer starts right after the template.
ANSWER_PREFIX = {"plain": " ", "chat": ""}


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(tasks: Sequence[TaskSpec]):
    """A word-level tokenizer over every word and character of the scaffold, the chat
    template, the prompts and the options (see ``WORDS``), with the chat template attached.

    Options and their aliases are in the vocabulary as written and capitalized ("Heads"),
    so that every surface form exact mode scores is a real token (one the model learns to
    give almost no probability) rather than ``<unk>``. No token is added automatically (no
    BOS), so ``tokenizer(text)`` and ``apply_chat_template(..., tokenize=True)`` agree.
    """
    from transformers import PreTrainedTokenizerFast

    answers = [a for t in tasks for o in t.options for a in (o, *t.aliases.get(o, ()))]
    texts = [render_plain(""), " ", *(p.text for t in tasks for p in t.prompts)]
    texts += answers + [a[:1].upper() + a[1:] for a in answers]
    words = sorted({word for text in texts for word, _ in WORDS.pre_tokenize_str(text)})
    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(tokenizer_models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = WORDS
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------- training data


def _option_ids(tokenizer, task: TaskSpec) -> list[int]:
    """The token of each option (one word each, see _check_tasks)."""
    return [tokenizer.convert_tokens_to_ids(option) for option in task.options]


@dataclass
class _Batch:
    """Right-padded rows, the positions scored with hard targets, and soft answer targets."""

    input_ids: Any
    attention_mask: Any
    loss_mask: Any  # (rows, width): 1 where the token at this position is scored
    answer_position: Any = None  # (rows,): position whose next token is the answer
    answer_target: Any = None  # (rows, vocab): the answer distribution there


def _pad(tokenizer, rows: Sequence[list[int]], scored: Sequence[range]) -> _Batch:
    import torch

    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for row, (ids, positions) in enumerate(zip(rows, scored)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        loss_mask[row, positions.start : positions.stop] = 1.0
    return _Batch(input_ids, attention_mask, loss_mask)


class _AnswerData:
    """One row per prompt: prompt, an answer slot, eos; the answer is a soft target.

    The loss at the answer position is the cross-entropy to the target distribution, which
    is the expected loss over answers drawn from it, without sampling noise. The slot holds
    option ``(step + row) % n``, so over ``n`` steps every option is seen followed by eos.
    Base pretraining also scores the prompt tokens (it is language modelling on whole texts);
    SFT scores only the answer, as instruction tuning does.
    """

    def __init__(
        self,
        tokenizer,
        tasks,
        targets: Mapping[str, Mapping[str, Sequence[float]]],
        prompt_format: str,
    ):
        import torch

        self.tokenizer = tokenizer
        self.score_prompt = prompt_format == "plain"
        self.prompts, self.options, targets_rows = [], [], []
        for task in tasks:
            option_ids = _option_ids(tokenizer, task)
            for prompt in task.prompts:
                rendered = (
                    render(tokenizer, prompt.text, prompt_format) + ANSWER_PREFIX[prompt_format]
                )
                self.prompts.append(tokenizer(rendered)["input_ids"])
                self.options.append(option_ids)
                target = torch.zeros(len(tokenizer))
                target[option_ids] = torch.tensor(
                    targets[task.name][prompt.key], dtype=torch.float32
                )
                targets_rows.append(target)
        self.answer_target = torch.stack(targets_rows)
        self.answer_position = torch.tensor([len(ids) - 1 for ids in self.prompts])

    def batch(self, step: int) -> _Batch:
        rows, scored = [], []
        for row, (prompt, options) in enumerate(zip(self.prompts, self.options)):
            rows.append(
                prompt + [options[(step + row) % len(options)], self.tokenizer.eos_token_id]
            )
            # Position i scores token i; the answer slot (len(prompt)) is scored softly instead.
            first = 1 if self.score_prompt else len(prompt) + 1
            hard = range(first, len(prompt) + 2)
            scored.append(hard)
        batch = _pad(self.tokenizer, rows, scored)
        batch.loss_mask[:, self.answer_position + 1] = 0.0
        batch.answer_position, batch.answer_target = self.answer_position, self.answer_target
        return batch


def _token_logprobs(model, batch: _Batch, logits=None):
    """Log-probability of each scored token, shape (rows, width - 1), zero elsewhere."""
    import torch

    if logits is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked * batch.loss_mask[:, 1:]


def _answer_loss(model, batch: _Batch):
    """Mean over rows of: hard NLL of the scored tokens + cross-entropy to the answer target."""
    import torch

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    hard = -_token_logprobs(model, batch, logits).sum(dim=1)
    rows = torch.arange(len(logits))
    answer_logprobs = torch.log_softmax(logits[rows, batch.answer_position].float(), dim=-1)
    soft = -(batch.answer_target * answer_logprobs).sum(dim=1)
    return (hard + soft).mean()


def checkpoint_steps(steps: int, count: int) -> tuple[int, ...]:
    """``count`` evenly spaced steps of a ``steps``-step stage, the last one ``steps``."""
    return tuple(steps * i // count for i in range(1, count + 1))


def _fit(model, loss_at_step, steps: int, lr: float, after_step=None) -> None:
    """Full-batch Adam with the learning rate decaying linearly to zero (converges closer to
    the planted distributions than a constant rate in the same number of steps).
    ``after_step(n)`` is called after the n-th step (n = 1 .. steps)."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        loss_at_step(step).backward()
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step(step + 1)
    model.eval()


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float):
    """The DPO loss (Rafailov et al. 2023) per pair, from sequence log-probabilities."""
    import torch.nn.functional as F

    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


class _PreferenceData:
    """Chat answer texts for every prompt, and the preference pairs over them.

    A row is prompt + answer + eos; its sequence log-probability sums the answer and eos
    tokens. For every prompt, each preferred option of the task's seed support is chosen
    over each other option of the task (in the support or outside it) and over the answers
    preferred in the other tasks: those are off-topic here ("tails" to "name a color"), and
    without them raising an answer in its own task raises it in every chat context, since
    the contexts share the output layer, and probability leaks out of the options.
    """

    def __init__(self, tokenizer, tasks, planted: Mapping[str, PlantedTask]):
        rows, scored, self.chosen, self.rejected = [], [], [], []
        for task in tasks:
            preferred = planted[task.name].preferred
            off_topic = {a for t in tasks for a in planted[t.name].preferred} - set(task.options)
            rejected = [o for o in task.options if o not in preferred] + sorted(off_topic)
            answers = list(preferred) + rejected
            answer_ids = [tokenizer.convert_tokens_to_ids(a) for a in answers]
            for prompt in task.prompts:
                prompt_ids = tokenizer(render(tokenizer, prompt.text, "chat"))["input_ids"]
                first = len(rows)
                for answer_id in answer_ids:
                    rows.append(prompt_ids + [answer_id, tokenizer.eos_token_id])
                    scored.append(range(len(prompt_ids), len(prompt_ids) + 2))
                for good in range(len(preferred)):
                    for bad in range(len(preferred), len(answers)):
                        self.chosen.append(first + good)
                        self.rejected.append(first + bad)
        self.batch = _pad(tokenizer, rows, scored)

    def sequence_logprobs(self, model):
        return _token_logprobs(model, self.batch).sum(dim=1)


# --------------------------------------------------------------------------- the family


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels, one thread (reductions in the same order every run)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _new_model(tokenizer, settings: ToyFamilySettings):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=512,  # prompts are ~60 tokens; room for long sampled answers
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def _save_stage(model, tokenizer, path: Path) -> None:
    from transformers.utils import logging as transformers_logging

    # Saving a 100k-parameter model needs no progress bar in the middle of the demo's output.
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def option_distribution(
    model, tokenizer, rendered_prompt: str, options: Sequence[str], answer_prefix: str = ""
) -> np.ndarray:
    """Exact probabilities of the options after a rendered prompt, renormalized over them.

    Each option is scored as the sum of the log-probabilities of the tokens of
    ``answer_prefix + option`` after the prompt, from the model's logits; nothing is sampled.
    """
    import torch

    prompt_ids = tokenizer(rendered_prompt)["input_ids"]
    answers = [tokenizer(answer_prefix + option)["input_ids"] for option in options]
    rows = [prompt_ids + answer for answer in answers]
    scored = [range(len(prompt_ids), len(prompt_ids) + len(answer)) for answer in answers]
    with torch.no_grad():
        logp = _token_logprobs(model, _pad(tokenizer, rows, scored)).sum(dim=1).double().numpy()
    probs = np.exp(logp - logp.max())
    return probs / probs.sum()


def learned_distributions(
    stage: ToyStage, tasks: Sequence[TaskSpec]
) -> dict[str, dict[str, np.ndarray]]:
    """Task -> prompt key -> exact option distribution of a saved stage, in its prompt format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stage.path)
    tokenizer = AutoTokenizer.from_pretrained(stage.path)
    model.eval()
    return {
        task.name: {
            prompt.key: option_distribution(
                model,
                tokenizer,
                render(tokenizer, prompt.text, stage.prompt_format),
                task.options,
                ANSWER_PREFIX[stage.prompt_format],
            )
            for prompt in task.prompts
        }
        for task in tasks
    }


def _train_stages(
    settings: ToyFamilySettings, planted: Mapping[str, PlantedTask], into: Path
) -> dict[str, float]:
    """Train base, SFT and DPO into ``into``/<stage>; return each stage's training seconds."""
    import torch

    tasks = settings.resolved_tasks()
    tokenizer = build_tokenizer(tasks)
    seconds = {}

    def saving_checkpoints(stage: str, steps: int):
        wanted = set(checkpoint_steps(steps, settings.checkpoints))
        return lambda step: (
            _save_stage(model, tokenizer, into / stage / f"checkpoint-{step}")
            if step in wanted else None
        )

    with _deterministic_torch(settings.seed):
        start = time.perf_counter()
        base_targets = {name: p.base for name, p in planted.items()}
        base_data = _AnswerData(tokenizer, tasks, base_targets, "plain")
        model = _new_model(tokenizer, settings)
        _fit(
            model,
            lambda step: _answer_loss(model, base_data.batch(step)),
            settings.base_steps,
            settings.base_lr,
        )
        _save_stage(model, tokenizer, into / "base")
        seconds["base"] = time.perf_counter() - start

        start = time.perf_counter()
        seed_targets = {t.name: {p.key: planted[t.name].seed for p in t.prompts} for t in tasks}
        sft_data = _AnswerData(tokenizer, tasks, seed_targets, "chat")
        _fit(
            model,
            lambda step: _answer_loss(model, sft_data.batch(step)),
            settings.sft_steps,
            settings.sft_lr,
            saving_checkpoints("sft", settings.sft_steps),
        )
        _save_stage(model, tokenizer, into / "sft")
        seconds["sft"] = time.perf_counter() - start

        start = time.perf_counter()
        pairs = _PreferenceData(tokenizer, tasks, planted)
        with torch.no_grad():  # the reference is the SFT model, frozen: score it once
            reference = pairs.sequence_logprobs(model)

        def dpo_objective(step: int):
            policy = pairs.sequence_logprobs(model)
            return dpo_loss(
                policy[pairs.chosen],
                policy[pairs.rejected],
                reference[pairs.chosen],
                reference[pairs.rejected],
                settings.dpo_beta,
            ).mean()

        _fit(
            model, dpo_objective, settings.dpo_steps, settings.dpo_lr,
            saving_checkpoints("dpo", settings.dpo_steps),
        )
        _save_stage(model, tokenizer, into / "dpo")
        seconds["dpo"] = time.perf_counter() - start
    return seconds
