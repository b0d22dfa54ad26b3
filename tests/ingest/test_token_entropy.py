"""The tree sampler's token entropies (docs/metrics.md, section 13) on a real tiny model,
against entropies computed here from the model's exact next-token distributions (plain
forward passes, warpers written from their definitions), and the branching factor through
ingest and analysis on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math

import pytest
import torch
from sqlalchemy import select
from tiny_models import cached_tiny_model

from analysis.crystallization import AnalysisOptions, analyze
from catalog.db import session_scope
from catalog.registry import add_model
from catalog.schema import Model, Prompt, Run
from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.jobs import IngestRequest, run_ingest
from ingest.sampling import encode_prompt

PROMPT = "Pick a random digit."
N = 20_000
# Hoeffding: the mean of N independent values in [0, b] is within t of its expectation
# except with probability 2 exp(-2 N t^2 / b^2); t is chosen for this significance.
SIGNIFICANCE = 1e-6


def hoeffding(bound: float, n: int = N) -> float:
    return bound * math.sqrt(math.log(2 / SIGNIFICANCE) / (2 * n))


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory, train_steps=80)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    """The loaded tiny model (not named ``backend``: that fixture is the database's)."""
    return load_backend(ModelSpec(str(tiny_path), prompt_format="chat"), device="cpu")


@pytest.fixture(scope="module")
def prompt_ids(tiny):
    return torch.tensor([encode_prompt(tiny.loaded.tokenizer, tiny.render(PROMPT, "chat"))])


def bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits over the last axis, 0 log 0 = 0."""
    logs = torch.where(p > 0, torch.log2(torch.where(p > 0, p, 1.0)), 0.0)
    return -(p * logs).sum(dim=-1)


def warped(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """softmax(logits / T) restricted to the top k logits (no top-p), in float64."""
    scaled = logits.double() / temperature
    if top_k is not None:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = torch.where(scaled < kth, -math.inf, scaled)
    return torch.softmax(scaled, dim=-1)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.7, None), (1.3, 5)])
def test_the_first_position_is_the_models_exact_entropy(tiny, prompt_ids, temperature, top_k):
    params = SamplingParams(n=500, temperature=temperature, top_k=top_k, max_new_tokens=1)
    tree = tiny.sampler.sample(tiny.render(PROMPT, "chat"), params, seed=1)
    with torch.inference_mode():
        logits = tiny.loaded.model(prompt_ids).logits[0, -1]
    exact = float(bits(warped(logits, temperature, top_k)))
    assert tree.entropy_tokens == [500]
    assert tree.entropy_bits[0] / 500 == pytest.approx(exact, rel=1e-5)
    completions = tiny.sample(tiny.render(PROMPT, "chat"), params, seed=1)
    assert completions.token_entropy.bits == tuple(tree.entropy_bits)
    assert completions.token_entropy.estimate is None


def test_the_second_position_matches_its_exact_expectation(tiny, prompt_ids):
    """Depth 2: the samples whose first token v is not EOS draw from q_v. Over N independent
    samples, tokens[2] / N estimates sum over non-EOS v of q(v), and bits[2] / N estimates
    sum over non-EOS v of q(v) H(q_v) (each sample adds a value in [0, log2 V])."""
    loaded = tiny.loaded
    params = SamplingParams(n=N, max_new_tokens=2)
    tree = tiny.sampler.sample(tiny.render(PROMPT, "chat"), params, seed=2)
    with torch.inference_mode():
        first = torch.softmax(loaded.model(prompt_ids).logits[0, -1].double(), dim=-1)
        vocab = len(first)
        extended = torch.cat([prompt_ids.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
        second = torch.softmax(loaded.model(extended).logits[:, -1].double(), dim=-1)
    going_on = torch.ones(vocab, dtype=torch.bool)
    going_on[loaded.eos_token_ids] = False
    expected_tokens = float(first[going_on].sum())
    expected_bits = float((first * bits(second))[going_on].sum())
    assert len(tree.entropy_tokens) == 2 and tree.entropy_tokens[0] == N
    assert tree.entropy_bits[0] / N == pytest.approx(float(bits(first)), rel=1e-5)
    assert abs(tree.entropy_tokens[1] / N - expected_tokens) < hoeffding(1.0)
    assert abs(tree.entropy_bits[1] / N - expected_bits) < hoeffding(math.log2(vocab))


def test_ingested_runs_carry_it_and_the_analysis_reports_it(engine, tiny_path):
    with session_scope(engine) as session:
        for stage, prompt_format in (("base", "plain"), ("sft", "chat")):
            add_model(session, name=f"tiny-{stage}", family="tiny", stage=stage,
                      source=str(tiny_path), prompt_format=prompt_format)
    run_ingest(engine, IngestRequest(
        families=["tiny"], tasks=["digit"], prompts=["plain", "terse", "polite"],
        params=SamplingParams(n=300, max_new_tokens=3), seed=1, mode="sampled",
    ))
    with engine.connect() as conn:
        stored = conn.execute(
            select(Model.stage, Prompt.key, Run.token_entropy)
            .join(Model, Model.id == Run.model_id).join(Prompt, Prompt.id == Run.prompt_id)
        ).all()
    assert len(stored) == 6
    expected: dict[str, list[float]] = {}
    for stage, _, entropy in stored:
        assert entropy["estimate"] is None and entropy["tokens"][0] == 300
        expected.setdefault(stage, []).append(sum(entropy["bits"]) / sum(entropy["tokens"]))
    task = analyze(engine).to_dict()["tasks"][0]
    # Resampling 3 prompts with replacement gives all three draws the lowest (highest)
    # prompt with probability 1/27 > 2.5%: with 4000 replicates the interval is exactly
    # [lowest, highest] unless fewer than 101 replicates draw it (probability ~ 1e-4).
    boot = analyze(engine, options=AnalysisOptions(bootstrap=4000, seed=3)).to_dict()["tasks"][0]
    for stage, values in expected.items():
        reported = task["branching_factor"][stage]
        mean = sum(values) / len(values)
        assert reported["n_prompts"] == 3
        assert reported["mean_token_entropy"] == pytest.approx(mean, rel=1e-12)
        assert reported["branching_factor"] == pytest.approx(2 ** mean, rel=1e-12)
        assert len(reported["by_position"]) <= 3 and reported["ci"] is None
        interval = boot["branching_factor"][stage]["ci"]
        assert interval["mean_token_entropy"] == pytest.approx([min(values), max(values)])
        assert interval["branching_factor"] == pytest.approx([2 ** min(values),
                                                              2 ** max(values)])
