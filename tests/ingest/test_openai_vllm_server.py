"""The ``openai`` backend against a real OpenAI-compatible server: vLLM's, from the CPU build,
serving a tiny model built here, compared with the transformers backend on the same model.

Runs in the vLLM venv (``scripts/test-vllm``). One server serves the module (its start-up,
about a minute, is the slow part). The tiny model ships sampling defaults in its
``generation_config.json`` (top_k 20, temperature 0.8) that vLLM's server applies unless a
request states its own: agreement with the tree sampler shows that every request does. The
test of a killed server kills the module's server, so it runs last.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import text
from stat_checks import homogeneity_pvalue
from tiny_models import cached_tiny_model
from vllm_server import VLLMServer

from catalog.errors import ModelLoadError
from catalog.prompting import text_hash
from catalog.tasks import bundled_task
from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.exact import default_surface_forms
from ingest.openai_backend import EndpointError

SIGNIFICANCE = 0.01  # chi-square homogeneity tests: reject at the 1% level
N = 2000
PROMPT = "Pick a random digit."
NAME = "tiny-served"
KEY = "test-key-5d1c0a"
KEY_VARIABLE = "CATALOG_TEST_VLLM_KEY"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory, train_steps=80, hidden_size=128, heads=2)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with VLLMServer(model_dir, NAME, key=KEY, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def tree_backend(model_dir):
    with load_backend(ModelSpec(str(model_dir)), device="cpu") as backend:
        yield backend


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, KEY)


def served(server, prompt_format: str = "chat", source: str = NAME, **options):
    options = {"base_url": server.url, "api_key_env": KEY_VARIABLE, **options}
    return load_backend(ModelSpec(source, prompt_format=prompt_format, backend="openai",
                                  backend_options=options))


@pytest.mark.parametrize(
    ("prompt_format", "with_tokenizer", "temperature", "top_p", "top_k"),
    [
        ("chat", True, 1.0, 1.0, None),  # the catalog renders: /v1/completions, token ids
        ("chat", False, 1.0, 1.0, None),  # the server renders: /v1/chat/completions
        ("chat", True, 0.7, 0.9, 5),
        ("plain", True, 1.0, 1.0, None),
    ],
)
def test_served_counts_and_tree_counts_come_from_one_distribution(
    server, model_dir, tree_backend, prompt_format, with_tokenizer, temperature, top_p, top_k
):
    tokenizer = {"tokenizer": str(model_dir)} if with_tokenizer else {}
    with served(server, prompt_format, max_n=64, concurrency=4, **tokenizer) as backend:
        rendered = backend.render(PROMPT)
        stop = ("\n",) if prompt_format == "plain" else ()
        params = SamplingParams(n=N, temperature=temperature, top_p=top_p, top_k=top_k,
                                max_new_tokens=6, stop=stop)
        from_server = backend.sample(rendered, params, seed=11)
        usage = backend.call_records()[0]["usage"]
        record = backend.backend_record()
    from_tree = tree_backend.sample(tree_backend.render(PROMPT, prompt_format), params, seed=12)
    assert sum(from_server.values()) == sum(from_tree.values()) == N
    assert homogeneity_pvalue(from_server, from_tree) > SIGNIFICANCE
    assert usage["requests"] == 32  # 2000 samples in requests of at most 64
    assert record["prompt_rendering"] == ("catalog" if with_tokenizer else "server")
    assert record["probe"]["n_honoured"] and record["probe"]["served_model"] == NAME
    assert record["probe"]["system_fingerprint"].startswith("vllm-")


def test_the_homogeneity_test_tells_the_servers_own_defaults_apart(server, tree_backend):
    """The model's generation_config (top_k 20, temperature 0.8) is what the server applies
    when a request leaves them out; the test must see the difference."""
    from openai import OpenAI

    rendered = tree_backend.render(PROMPT, "chat")
    client = OpenAI(base_url=server.url, api_key=KEY)
    texts = []
    for seed in range(20):
        answer = client.completions.create(model=NAME, prompt=rendered, n=100, max_tokens=6,
                                           seed=seed)
        texts += [choice.text for choice in answer.choices]
    defaults = {text: texts.count(text) for text in set(texts)}
    honest = tree_backend.sample(rendered, SamplingParams(n=N, max_new_tokens=6), seed=12)
    assert homogeneity_pvalue(defaults, honest) < SIGNIFICANCE


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_the_token_entropy_estimate_is_a_lower_bound_of_the_exact_one(
    server, model_dir, tree_backend, with_tokenizer
):
    """At the first position every sample draws from the prompt's one distribution: the
    server's top-5 logprobs, the rest as one outcome, bound the tree sampler's exact
    entropy from below (at temperature 1 raw and sampled distributions are one)."""
    tokenizer = {"tokenizer": str(model_dir)} if with_tokenizer else {}
    params = SamplingParams(n=200, max_new_tokens=4)
    with served(server, max_n=50, **tokenizer) as backend:
        estimated = backend.sample(backend.render(PROMPT), params, seed=5).token_entropy
    exact = tree_backend.sample(tree_backend.render(PROMPT, "chat"), params, seed=5).token_entropy
    assert estimated.estimate.startswith("top-5 logprobs")
    assert estimated.tokens[0] == exact.tokens[0] == 200
    assert 0 < estimated.bits[0] / 200 <= exact.bits[0] / 200 + 1e-3


def test_the_same_seed_gives_the_same_counts_on_this_server(server, model_dir):
    with served(server, tokenizer=str(model_dir), max_n=50) as backend:
        rendered = backend.render(PROMPT)
        params = SamplingParams(n=300, max_new_tokens=6)
        first = backend.sample(rendered, params, seed=3)
        assert backend.sample(rendered, params, seed=3) == first
        assert backend.sample(rendered, params, seed=4) != first
        assert backend.backend_record()["probe"]["seed_reproducible"] is True


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_exact_mode_agrees_with_the_transformers_backend(
    server, model_dir, tree_backend, prompt_format
):
    digit = bundled_task("digit")
    forms = default_surface_forms(digit.options, digit.aliases, prompt_format)
    with served(server, prompt_format, tokenizer=str(model_dir)) as backend:
        rendered = backend.render(PROMPT)
        from_server = backend.option_probabilities(rendered, forms)
    local = load_backend(ModelSpec(str(model_dir), prompt_format=prompt_format), device="cpu")
    with local:
        from_tree = local.option_probabilities(rendered, forms)
    assert from_server.probabilities.keys() == from_tree.probabilities.keys()
    for option, probability in from_tree.probabilities.items():
        assert from_server.probabilities[option] == pytest.approx(probability, abs=1e-4)
    assert from_server.covered_mass == pytest.approx(from_tree.covered_mass, rel=1e-4)


def test_a_wrong_key_and_a_wrong_model_name_are_one_line_each(server, monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, "not-the-key-93b1")
    with pytest.raises(ModelLoadError) as error:
        served(server)
    assert str(error.value) == (f"the server at {server.url} refused the request (401) with "
                                f"the key in ${KEY_VARIABLE}; check the API key")
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    with pytest.raises(ModelLoadError) as error:
        served(server, source="tiny-other")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"the server at {server.url} does not serve model 'tiny-other'")
    assert message.endswith(f"; it serves {NAME}; register the served name as --source")


def test_catalog_ingest_through_the_server_shares_the_local_runs_condition(
    db_url, engine, server, model_dir
):
    def catalog(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "catalog.cli", "--db", db_url, *args],
                              capture_output=True, text=True, timeout=600)

    for name, backend in (("tiny-local", ()), ("tiny-server", (
        "--backend", "openai", "--backend-arg", f"base_url={server.url}",
        "--backend-arg", f"api_key_env={KEY_VARIABLE}",
        "--backend-arg", f"tokenizer={model_dir}"))):
        source = str(model_dir) if name == "tiny-local" else NAME
        added = catalog("models", "add", name, "--family", name, "--stage", "sft",
                        "--source", source, *backend)
        assert added.returncode == 0, added.stderr
        done = catalog("ingest", "--model", name, "--task", "digit", "--prompt", "plain",
                       "--prompt", "terse", "--samples", "300", "--max-new-tokens", "6",
                       "--device", "cpu")
        assert done.returncode == 0, done.stderr[-3000:]
        assert KEY not in done.stdout + done.stderr
    with engine.connect() as conn:
        runs = conn.execute(text(
            "SELECT m.name, r.condition_key, r.rendered_prompt, r.rendered_prompt_hash, "
            "r.library_versions, r.n_samples, (SELECT SUM(count) FROM completions c "
            "WHERE c.run_id = r.id) AS stored FROM runs r JOIN models m ON m.id = r.model_id "
            "WHERE r.status = 'done' ORDER BY m.name, r.prompt_id")).all()
        stored = json.dumps([[str(v) for v in row] for table in ("models", "runs")
                             for row in conn.execute(text(f"SELECT * FROM {table}")).all()])
    local = [run for run in runs if run.name == "tiny-local"]
    remote = [run for run in runs if run.name == "tiny-server"]
    assert len(local) == len(remote) == 2
    for here, there in zip(local, remote):
        # one condition and one prompt text: the runs can be compared and pooled
        assert (there.condition_key, there.rendered_prompt) == (here.condition_key,
                                                                 here.rendered_prompt)
        assert there.rendered_prompt_hash == text_hash(here.rendered_prompt)
        assert there.n_samples == there.stored == 300
        record = _json(there.library_versions)["backend"]
        assert record["name"] == "openai" and record["probe"]["served_model"] == NAME
        assert record["usage"]["completion_tokens"] > 0
    assert KEY not in stored


def test_a_killed_server_fails_the_unit_in_one_line(server, model_dir):
    """Runs last: it kills the module's server."""
    backend = served(server, tokenizer=str(model_dir), max_retries=1, timeout=20)
    rendered = backend.render(PROMPT)
    assert sum(backend.sample(rendered, SamplingParams(n=20, max_new_tokens=6), 1).values()) == 20
    server.kill()
    with pytest.raises(EndpointError) as error:
        backend.sample(rendered, SamplingParams(n=20, max_new_tokens=6), 1)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach the server at {server.url} (")
    assert message.endswith("check base_url and that the server is running")


def _json(value):
    return json.loads(value) if isinstance(value, str) else value
