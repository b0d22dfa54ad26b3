"""Runs of different numeric precision never pool: a run sampled below float32 stores its
dtype in its condition (and so in its condition key); float32 runs keep their keys. Below
float32 the tree sampler computes the logits from the final hidden state in float32."""

from __future__ import annotations

import json

import pytest
import torch
from sqlalchemy import text
from tiny_models import PROMPTS, cached_tiny_model

from catalog.conditions import Condition
from ingest.backends import BACKENDS, ModelSpec, SamplingParams, TableBackend, load_backend
from ingest.backends import register_backend
from ingest.sampling import TreeSampler
from ingest.worker import precision_columns, run_worker
from table_workers import plan_grid, table_models


class Bfloat16Table(TableBackend):
    """The table backend reporting that it ran in bfloat16, as a GPU model would."""

    def provenance(self):
        return {**super().provenance(), "dtype": "bfloat16"}


@pytest.fixture
def bf16_table():
    register_backend("bf16-table", Bfloat16Table)
    yield
    BACKENDS.pop("bf16-table")


def stored_conditions(engine) -> list[tuple[dict, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT condition, condition_key, dtype FROM runs ORDER BY id")).all()
    return [(json.loads(c) if isinstance(c, str) else c, k, d) for c, k, d in rows]


def test_a_bfloat16_run_stores_its_dtype_in_its_condition(engine, tmp_path, bf16_table):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    planned, planned_key, _ = stored_conditions(engine)[0]
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET backend = 'bf16-table'"))
    assert run_worker(engine).done == 1
    condition, key, dtype = stored_conditions(engine)[0]
    assert dtype == "bfloat16" and condition == {**planned, "dtype": "bfloat16"}
    assert key == Condition.from_dict(condition).key != planned_key
    assert "bfloat16" in Condition.from_dict(condition).label()


def test_float32_and_unknown_precision_keep_the_planned_condition():
    planned = Condition.sampled(temperature=1.0, top_p=1.0, top_k=None,
                                max_new_tokens=8).to_dict()
    assert precision_columns(planned, "float32") == {}
    assert precision_columns(planned, None) == {}
    assert precision_columns(None, "float16") == {}
    half = precision_columns(planned, "float16")
    assert half["condition"]["dtype"] == "float16"
    assert half["condition_key"] != Condition.from_dict(planned).key
    # the key of a float32 condition is what it always was (no dtype in its JSON)
    assert "dtype" not in Condition.from_dict(planned).to_dict()


def tiny_backend(tmp_path_factory, dtype):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    return load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu", dtype=dtype)


def kl_divergence(reference, other):
    """KL(reference || other) of rows of logits, in nats."""
    p, q = reference.log_softmax(-1), other.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_bfloat16_logits_from_a_float32_head_are_closer_to_the_float32_model(tmp_path_factory):
    """The model's own bfloat16 head rounds every logit to bfloat16 before the float32
    upcast; the sampler's head runs in float32 on the final hidden state. Over every prefix
    of the three prompts (fixed weights, deterministic), its next-token distributions are
    closer to the float32 model's than the bfloat16 head's are."""
    reference, half = tiny_backend(tmp_path_factory, "float32"), tiny_backend(
        tmp_path_factory, "bfloat16")
    sampler = half.sampler
    assert sampler.float32_head and not reference.sampler.float32_head
    # the run says which logits it sampled from
    assert half.provenance()["library_versions"]["logits"] == "float32 head"
    assert reference.provenance()["library_versions"]["logits"] == "model head"
    tokenizer = reference.loaded.tokenizer
    exact, own, ours = [], [], []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer(reference.render(prompt, "chat"))["input_ids"]])
            for length in range(4, ids.shape[1] + 1):
                prefix = ids[:, :length]
                exact.append(reference.loaded.model(input_ids=prefix).logits[:, -1].float())
                own.append(half.loaded.model(input_ids=prefix).logits[:, -1].float())
                ours.append(sampler._forward(prefix, sampler._new_cache()))
    exact, own, ours = torch.cat(exact), torch.cat(own), torch.cat(ours)
    assert not torch.equal(own, ours)
    # measured: 3.1e-5 nats (bfloat16 head) against 1.7e-5 (float32 head)
    assert kl_divergence(exact, ours) < 0.75 * kl_divergence(exact, own)
    counts = half.sample(half.render(PROMPTS[0], "chat"), SamplingParams(n=300), seed=1)
    assert sum(counts.values()) == 300


def test_a_float16_head_no_longer_overflows_where_its_logits_fit_float32(tmp_path_factory):
    half = tiny_backend(tmp_path_factory, "float16")
    model = half.loaded.model
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied
    with torch.no_grad():  # logits past float16's 65504, far inside float32's range
        model.lm_head.weight.mul_(3e4)
    rendered = half.render(PROMPTS[0], "chat")
    ids = torch.tensor([half.loaded.tokenizer(rendered)["input_ids"]])
    with torch.inference_mode():
        assert not model(input_ids=ids).logits.isfinite().all()  # the model's own head
    counts = half.sample(rendered, SamplingParams(n=200, max_new_tokens=4), seed=1)
    assert sum(counts.values()) == 200


def test_the_float32_head_replaces_only_a_plain_head(tmp_path_factory):
    """A model family that transforms the head's output (here: Gemma's softcapping) keeps its
    own logits; so does a model whose own logits disagree with the float32 head on a probe
    (here: a head whose output the model rescales by a hook)."""
    loaded = tiny_backend(tmp_path_factory, "bfloat16").loaded
    model, eos = loaded.model, loaded.eos_token_ids
    assert TreeSampler(model, loaded.tokenizer, eos).float32_head
    model.config.final_logit_softcapping = 30.0
    try:
        assert not TreeSampler(model, loaded.tokenizer, eos).float32_head
    finally:
        model.config.final_logit_softcapping = None
    hook = model.lm_head.register_forward_hook(lambda module, args, output: output / 8)
    try:
        assert not TreeSampler(model, loaded.tokenizer, eos).float32_head
    finally:
        hook.remove()
