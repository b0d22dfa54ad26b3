"""A small synthetic alignment lab: a toy model family whose seed we know.

:func:`train_family` trains a tiny transformers causal LM (LlamaForCausalLM, a word-level
tokenizer built with the ``tokenizers`` library) through three stages on the CPU:

- ``base`` (prompt format "plain"): pretrained on text in the catalog's plain scaffold,
  ``Question: {prompt}\\nAnswer: {answer}</s>``, where every prompt variant of every task has
  its own planted answer distribution (peaked on different options, some flatter), so the
  base model is *liquid*;
- ``sft`` (prompt format "chat"): fine-tuned from base on the same prompts rendered through
  the chat template, every prompt answered with one planted base prompt's distribution (the
  *seed*), so the model *nucleates* onto it;
- ``dpo`` (prompt format "chat"): a DPO loss against the frozen SFT model on preference pairs
  that prefer some options inside the seed's support over the task's other options (and
  over off-topic answers), so probability moves inside the support but stays on it
  (*settling*).

With ``checkpoints=K`` SFT and DPO also save K evenly spaced checkpoints each, in the
Trainer layout (``<stage dir>/checkpoint-<step>/``, the last one at the stage's final step),
which :func:`register_family` registers as the stage's steps: a trajectory of 2K + 1 models.

Answers are not sampled: the loss at the answer position is the cross-entropy to the planted
distribution, which is the expected loss over infinitely many sampled answers, so the model
learns the planted distributions without sampling noise, and a family trains in well under
a minute of CPU time. Everything is deterministic given the settings (seeded RNGs,
deterministic kernels, one CPU thread), and a trained family is cached in a directory named
after the hash of its settings, with a ``manifest.json`` holding the planted ground truth.

torch and transformers are imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models

from catalog import registry
from catalog.errors import InvalidInput
from catalog.prompting import render, render_plain
from catalog.tasks import PromptSpec, TaskSpec, bundled_task

# Bump when a change in this module changes what a given set of settings trains: the version
# is part of the settings hash, so stale cached families are not reused.
TOYLAB_VERSION = "2"

DEFAULT_TASKS = ("digit", "coin", "color")
MANIFEST = "manifest.json"

# (stage name, prompt format), in stage order.
STAGES = (("base", "plain"), ("sft", "chat"), ("dpo", "chat"))

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

# Seed support threshold, as in the metrics contract (ProbMass, tau = 0.9).
SUPPORT_TAU = 0.9
# The planted peak mass of a prompt lies in [PEAK_LOW, PEAK_HIGH]: from flat to sharp, so the
# base model is liquid even on a two-option task (coin: mean pairwise JSD ~0.17).
PEAK_LOW, PEAK_HIGH = 0.35, 0.97
# Share of every planted distribution spread uniformly, so no option is impossible at base.
UNIFORM_FLOOR = 0.02


@dataclass(frozen=True)
class ToyFamilySettings:
    """Everything that determines a toy family; its hash names the cache directory.

    ``tasks``: closed tasks to train on (default: the bundled digit, coin and color).
    ``seed_prompts``: task name -> prompt key planted as that task's seed; a task not named
    gets its prompt at ``default_seed_position`` (not 0 by default, so a seed that an
    analysis finds only by breaking ties towards the lowest prompt id cannot pass for the
    planted one). ``prompts_per_task``: use the first K prompts of each task (None: all).
    ``world_seed`` draws the planted base distributions (the "pretraining data"): families
    with the same world seed share them, as real families share web text, so a seed found in
    one predicts another's. ``seed`` initializes and trains the weights. ``checkpoints``:
    how many evenly spaced checkpoints SFT and DPO each save (0: none); saving does not
    change training, so the final stages are those of the same settings without checkpoints.
    """

    tasks: tuple[TaskSpec, ...] | None = None
    seed_prompts: Mapping[str, str] = field(default_factory=dict)
    default_seed_position: int = 2
    prompts_per_task: int | None = 12
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    base_steps: int = 300
    sft_steps: int = 120
    dpo_steps: int = 12
    base_lr: float = 8e-3
    sft_lr: float = 6e-3
    dpo_lr: float = 5e-4
    dpo_beta: float = 0.5
    world_seed: int = 0
    seed: int = 0
    checkpoints: int = 0

    def resolved_tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks, cut to the first ``prompts_per_task`` prompts, validated."""
        tasks = self.tasks
        if tasks is None:
            tasks = tuple(bundled_task(name) for name in DEFAULT_TASKS)
        resolved = tuple(_cut_prompts(task, self.prompts_per_task) for task in tasks)
        _check_tasks(resolved, self)
        return resolved

    def seed_key(self, task: TaskSpec) -> str:
        if task.name in self.seed_prompts:
            return self.seed_prompts[task.name]
        return task.prompts[self.default_seed_position].key

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form holding everything training depends on (the hash input)."""
        tasks = self.resolved_tasks()
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["tasks"] = [_task_dict(task) for task in tasks]
        data["seed_prompts"] = {task.name: self.seed_key(task) for task in tasks}
        data["toylab_version"] = TOYLAB_VERSION
        return data

    def settings_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PlantedTask:
    """The ground truth planted for one task."""

    task: str
    options: tuple[str, ...]
    base: Mapping[str, tuple[float, ...]]  # prompt key -> answer distribution over options
    seed_key: str
    preferred: tuple[str, ...]  # options DPO prefers (inside the seed support)

    @property
    def seed(self) -> tuple[float, ...]:
        return self.base[self.seed_key]

    @property
    def support(self) -> tuple[str, ...]:
        """The seed support at tau = 0.9, built as the metrics contract builds it."""
        return seed_support(self.options, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": list(self.options),
            "base": {key: list(probs) for key, probs in self.base.items()},
            "seed_prompt": self.seed_key,
            "support": list(self.support),
            "preferred": list(self.preferred),
        }

    @classmethod
    def from_dict(cls, task: str, data: Mapping[str, Any]) -> PlantedTask:
        return cls(
            task=task,
            options=tuple(data["options"]),
            base={key: tuple(probs) for key, probs in data["base"].items()},
            seed_key=data["seed_prompt"],
            preferred=tuple(data["preferred"]),
        )


@dataclass(frozen=True)
class ToyStage:
    name: str
    order: int
    prompt_format: str  # "plain" or "chat", as the model registry records it
    path: Path
    checkpoints: tuple[int, ...] = ()  # steps saved in path/checkpoint-<step>/, in order

    def checkpoint(self, step: int) -> ToyStage:
        """The stage's checkpoint at ``step``, as a stage of its own (no checkpoints)."""
        if step not in self.checkpoints:
            raise InvalidInput(
                f"toy stage {self.name!r} has checkpoints at steps {list(self.checkpoints)}, "
                f"not {step}"
            )
        return replace(self, path=self.path / f"checkpoint-{step}", checkpoints=())


@dataclass(frozen=True)
class ToyFamily:
    """A trained toy family: its stage directories and the planted ground truth."""

    root: Path
    settings: ToyFamilySettings
    settings_hash: str
    stages: tuple[ToyStage, ...]
    planted: Mapping[str, PlantedTask]
    train_seconds: Mapping[str, float]
    reused: bool  # True when this call found the family in the cache

    @property
    def name(self) -> str:
        """The default family name: its directory name, ``toy-<settings hash[:12]>``."""
        return self.root.name

    def stage(self, name: str) -> ToyStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise InvalidInput(
            f"toy families have stages {', '.join(s for s, _ in STAGES)}, not {name!r}"
        )


# --------------------------------------------------------------------------- planting


def seed_support(
    options: Sequence[str], dist: Sequence[float], tau: float = SUPPORT_TAU
) -> tuple[str, ...]:
    """Smallest set of options, by decreasing probability (ties: option text), with mass >= tau."""
    ranked = sorted(zip(options, dist), key=lambda pair: (-pair[1], pair[0]))
    support, mass = [], 0.0
    for option, prob in ranked:
        support.append(option)
        mass += prob
        if mass >= tau - 1e-9:
            break
    return tuple(support)


def plant_task(task: TaskSpec, seed_key: str, rng: np.random.Generator) -> PlantedTask:
    """Plant one answer distribution per prompt, and the DPO preferences inside the seed support.

    Prompt i peaks on option ``order[i % n]`` (a random order, so argmaxes differ across
    prompts). Prompts sharing a peak option get peak masses spread evenly over
    [low, PEAK_HIGH] so that no two prompts plant nearly the same distribution; the rest of
    the mass goes to the other options by a Dirichlet draw, which makes low-peak prompts flat
    and high-peak prompts sharp. DPO prefers the more probable half of the seed support:
    an analysis estimates the support from samples, and an option at its edge may fall out
    of the estimate, so the options DPO moves mass to must not be the marginal ones.
    """
    n = len(task.options)
    low = max(PEAK_LOW, 1.0 / n + 0.05)  # the peak must stay the argmax (coin: > 0.5)
    order = rng.permutation(n)
    by_peak: dict[int, list[int]] = {}
    for i in range(len(task.prompts)):
        by_peak.setdefault(int(order[i % n]), []).append(i)
    peak_mass = np.empty(len(task.prompts))
    for group in by_peak.values():
        if len(group) == 1:
            levels = np.array([rng.uniform(low, PEAK_HIGH)])
        else:
            levels = np.linspace(low, PEAK_HIGH, len(group))
        peak_mass[group] = rng.permutation(levels)
    dists = []
    for i in range(len(task.prompts)):
        rest = rng.dirichlet(np.full(n - 1, 0.5)) * (1.0 - peak_mass[i])
        dist = np.insert(rest, int(order[i % n]), peak_mass[i])
        dist = (1.0 - UNIFORM_FLOOR) * dist + UNIFORM_FLOOR / n
        dists.append(tuple(float(p) for p in dist / dist.sum()))
    # DPO moves mass inside the seed support, so the seed needs two or more options there:
    # if its distribution is too sharp, it trades distributions with the nearest prompt
    # whose distribution is broad enough, or (if none is) is flattened.
    seed_index = [p.key for p in task.prompts].index(seed_key)
    broad = [i for i, d in enumerate(dists) if len(seed_support(task.options, d)) >= 2]
    if broad:
        swap = min(broad, key=lambda i: (abs(i - seed_index), i))
        dists[seed_index], dists[swap] = dists[swap], dists[seed_index]
    else:
        sharp = np.array(dists[seed_index])
        keep = (0.8 - 1.0 / n) / (sharp.max() - 1.0 / n)  # peak 0.8 after mixing in uniform
        dists[seed_index] = tuple(float(p) for p in keep * sharp + (1.0 - keep) / n)
    base = {prompt.key: dist for prompt, dist in zip(task.prompts, dists)}
    support = seed_support(task.options, base[seed_key])
    n_preferred = math.ceil(len(support) / 2)
    preferred = tuple(sorted(support[:n_preferred]))  # support is ordered by probability
    return PlantedTask(task.name, tuple(task.options), base, seed_key, preferred)


def plant(settings: ToyFamilySettings) -> dict[str, PlantedTask]:
    """The planted ground truth of every task, from the settings' world seed."""
    planted = {}
    for index, task in enumerate(settings.resolved_tasks()):
        rng = np.random.default_rng([settings.world_seed, index])
        planted[task.name] = plant_task(task, settings.seed_key(task), rng)
    return planted


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


def family_dir(out_dir: str | os.PathLike, settings: ToyFamilySettings) -> Path:
    """Where the family for these settings lives (or will live) under ``out_dir``."""
    return Path(out_dir) / f"toy-{settings.settings_hash()[:12]}"


def train_family(
    out_dir: str | os.PathLike,
    settings: ToyFamilySettings | None = None,
    *,
    checkpoints: int | None = None,
) -> ToyFamily:
    """Train the toy family for ``settings`` under ``out_dir``, or reuse the cached one.

    The family lives in ``out_dir/toy-<settings hash>``: one directory per stage (loadable
    with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained``; with ``checkpoints``,
    which overrides the settings' field, SFT and DPO also hold that many ``checkpoint-<step>/``
    directories) and ``manifest.json`` with the settings, the planted ground truth and the
    training times. A file lock keeps two processes from training the same family at once;
    training happens in a scratch directory that is renamed into place when complete, so a
    crash never leaves a family that looks finished.
    """
    settings = settings or ToyFamilySettings()
    if checkpoints is not None:
        settings = replace(settings, checkpoints=checkpoints)
    root = family_dir(out_dir, settings)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        cached = _read_family(root, settings)
        if cached is not None:
            return cached
        planted = plant(settings)
        scratch = root.with_name(root.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        seconds = _train_stages(settings, planted, scratch)
        _write_manifest(scratch, settings, planted, seconds)
        os.replace(scratch, root)
        return _family(root, settings, planted, seconds, reused=False)


def _family(root, settings, planted, seconds, reused: bool) -> ToyFamily:
    stages = tuple(
        ToyStage(name, order, prompt_format, root / name, _stage_checkpoints(settings, name))
        for order, (name, prompt_format) in enumerate(STAGES)
    )
    return ToyFamily(
        root=root,
        settings=settings,
        settings_hash=settings.settings_hash(),
        stages=stages,
        planted=planted,
        train_seconds=seconds,
        reused=reused,
    )


def _stage_checkpoints(settings: ToyFamilySettings, stage: str) -> tuple[int, ...]:
    steps = {"sft": settings.sft_steps, "dpo": settings.dpo_steps}.get(stage)
    return () if steps is None else checkpoint_steps(steps, settings.checkpoints)


def _write_manifest(root: Path, settings, planted, seconds) -> None:
    import torch
    import transformers

    manifest = {
        "toylab_version": TOYLAB_VERSION,
        "settings_hash": settings.settings_hash(),
        "settings": settings.to_dict(),
        "stages": [
            {"name": n, "order": i, "prompt_format": f,
             "checkpoints": list(_stage_checkpoints(settings, n))}
            for i, (n, f) in enumerate(STAGES)
        ],
        "planted": {name: p.to_dict() for name, p in planted.items()},
        "train_seconds": seconds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _read_family(root: Path, settings: ToyFamilySettings) -> ToyFamily | None:
    """The cached family at ``root`` if it was trained with exactly these settings."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("settings_hash") != settings.settings_hash():
        return None
    planted = {
        name: PlantedTask.from_dict(name, data) for name, data in manifest["planted"].items()
    }
    return _family(root, settings, planted, manifest["train_seconds"], reused=True)


def register_family(session, family: ToyFamily, name: str | None = None) -> list:
    """Register the toy family's stages in the catalog as an ordinary family.

    Models are named ``<family name>-<stage>`` with the stage directory as source; the family
    name defaults to :attr:`ToyFamily.name`. A stage with checkpoints is registered as its
    checkpoints instead (``<family name>-<stage>-step<step>``, through
    :func:`catalog.registry.add_checkpoints`; its last one is the stage's final model).
    Registering the same family again changes nothing; another family under a name already
    taken is an InvalidInput. Tasks are not registered here (sync them with
    :func:`catalog.registry.sync_task`).
    """
    family_name = name or family.name
    seeds = ", ".join(f"{task}={p.seed_key}" for task, p in sorted(family.planted.items()))
    registry.ensure_family(
        session, family_name, description=f"Toy family from the catalog's toy lab ({family.root})"
    )
    models = []
    for stage in family.stages:
        fields = dict(
            family=family_name, stage=stage.name, stage_order=stage.order, source=str(stage.path),
            prompt_format=stage.prompt_format,
            notes=f"toy lab stage; planted seed prompts: {seeds}",
        )
        if stage.checkpoints:
            models += registry.add_checkpoints(session, **fields)
        else:
            models.append(registry.add_model(session, name=f"{family_name}-{stage.name}", **fields))
    return models


# --------------------------------------------------------------------------- validation


def _cut_prompts(task: TaskSpec, limit: int | None) -> TaskSpec:
    if limit is None or len(task.prompts) <= limit:
        return task
    return replace(task, prompts=tuple(task.prompts[:limit]))


def _check_tasks(tasks: Sequence[TaskSpec], settings: ToyFamilySettings) -> None:
    if settings.prompts_per_task is not None and settings.prompts_per_task < 2:
        raise InvalidInput("the toy lab needs at least 2 prompts per task; raise prompts_per_task")
    most = min(settings.sft_steps, settings.dpo_steps)
    if not 0 <= settings.checkpoints <= most:
        raise InvalidInput(
            f"checkpoints must be between 0 and {most} (the steps of the shorter of SFT and "
            f"DPO), got {settings.checkpoints}"
        )
    names = [t.name for t in tasks]
    unknown = sorted(set(settings.seed_prompts) - set(names))
    if unknown:
        raise InvalidInput(f"seed_prompts names tasks not in the toy family: {', '.join(unknown)}")
    for task in tasks:
        if task.kind != "closed" or len(task.options) < 2:
            raise InvalidInput(f"toy lab task {task.name!r} must be closed with at least 2 options")
        for option in task.options:
            if not re.fullmatch(r"\w+", option):
                raise InvalidInput(
                    f"toy lab task {task.name!r}: option {option!r} is not one word; "
                    "the toy lab trains single-word options only"
                )
        keys = [p.key for p in task.prompts]
        seed_key = settings.seed_prompts.get(task.name)
        if seed_key is not None and seed_key not in keys:
            raise InvalidInput(
                f"planted seed prompt {seed_key!r} is not among the first {len(keys)} prompts of "
                f"task {task.name!r}; pick one of: {', '.join(keys)}"
            )
        if seed_key is None and not 0 <= settings.default_seed_position < len(keys):
            raise InvalidInput(
                f"default_seed_position {settings.default_seed_position} is out of range for task "
                f"{task.name!r} with {len(keys)} prompts; name its seed in seed_prompts"
            )


def _task_dict(task: TaskSpec) -> dict[str, Any]:
    return {
        "name": task.name,
        "options": list(task.options),
        "prompts": [[p.key, p.text] for p in task.prompts],
        # Aliases are words of the vocabulary, so they change the model too.
        "aliases": {option: list(forms) for option, forms in sorted(task.aliases.items())},
    }


def make_task(name: str, options: Sequence[str], prompts: Sequence[tuple[str, str]]) -> TaskSpec:
    """A closed task spec from plain values (for custom toy families and tests)."""
    return TaskSpec(
        name=name,
        kind="closed",
        normalizer="choice",
        options=tuple(options),
        prompts=tuple(PromptSpec(key, text) for key, text in prompts),
    )
