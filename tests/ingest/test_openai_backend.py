"""The ``openai`` backend against a small OpenAI-compatible server of the test's own (real
sockets on 127.0.0.1, tests/openai_server.py): requests, retries, faults and the API key.

Agreement with a real server (vLLM's, serving a tiny model) is tested in
tests/ingest/test_openai_vllm_server.py, in the vLLM venv.
"""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
from click.testing import CliRunner
from openai_server import DISTRIBUTION, CompatibleServer
from sqlalchemy import text
from stat_checks import goodness_of_fit
from tiny_models import cached_tiny_model

from catalog.cli import main
from catalog.errors import InvalidInput, ModelLoadError
from ingest.backends import (
    ModelSpec,
    SampleRequest,
    SamplingParams,
    check_backend_options,
    load_backend,
)
from ingest.openai_backend import EndpointError, request_seed, request_splits
from ingest.planning import unit_seed

SIGNIFICANCE = 0.01  # goodness-of-fit tests: reject at the 1% level
MODEL = "served-model"
SECRET = "sk-test-7f3a9c1e5b2d4806"  # an API key: must never be stored or printed
KEY_VARIABLE = "CATALOG_TEST_API_KEY"


@pytest.fixture
def server():
    with CompatibleServer(model=MODEL) as running:
        yield running


def spec(url: str, prompt_format: str = "plain", source: str = MODEL, **options) -> ModelSpec:
    return ModelSpec(source, prompt_format=prompt_format, backend="openai",
                     backend_options={"base_url": url, "max_retries": 3, **options})


def one_line_error(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ sampling


def test_counts_follow_the_served_distribution_and_every_parameter_is_stated(server):
    with load_backend(spec(server.url, max_n=250)) as backend:
        rendered = backend.render("Pick a random digit.")
        params = SamplingParams(n=2000, temperature=0.8, top_p=0.95, max_new_tokens=6,
                                stop=("\n",))
        counts = backend.sample(rendered, params, seed=5)
    assert sum(counts.values()) == 2000
    pvalue, categories = goodness_of_fit(counts, DISTRIBUTION, 2000)
    assert categories >= 3 and pvalue > SIGNIFICANCE
    sampled = server.sampling_requests()[2:]  # after the probe's two requests
    assert len(sampled) == 8
    for body in sampled:
        assert body["prompt"] == "Question: Pick a random digit.\nAnswer:"
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.8, 0.95, 6)
        assert body["stop"] == ["\n"] and body["n"] == 250 and body["model"] == MODEL
        assert (body["presence_penalty"], body["frequency_penalty"]) == (0.0, 0.0)
        # vLLM's own defaults (generation_config.json) must not apply: off, stated
        assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)


def test_a_unit_larger_than_max_n_is_split_into_requests_with_derived_seeds(server):
    with load_backend(spec(server.url, max_n=16)) as backend:
        rendered = backend.render("Pick a random digit.")
        params = SamplingParams(n=50, max_new_tokens=6)
        counts = backend.sample(rendered, params, seed=99)
        usage = backend.call_records()[0]["usage"]
        again = backend.sample(rendered, params, seed=99)
        other = backend.sample(rendered, params, seed=100)
    sent = server.sampling_requests()[2:52]
    # in flight together, so they may arrive in any order
    assert {body["seed"]: body["n"] for body in sent[:4]} == {
        request_seed(99, i): n for i, n in enumerate([16, 16, 16, 2])}
    assert sum(counts.values()) == 50 and counts == again and counts != other
    assert usage["requests"] == 4 and usage["prompt_tokens"] == 4 * 5


def test_request_splits_cover_n_and_seeds_fit_every_server():
    splits = request_splits(1000, 2**63 - 1, 64)
    assert sum(n for n, _ in splits) == 1000 and max(n for n, _ in splits) == 64
    assert all(0 <= seed < 2**31 for _, seed in splits)
    assert request_splits(64, 1, 64) == [(64, request_seed(1, 0))]


def test_units_of_one_call_are_sent_concurrently_and_counted_apart(server):
    with load_backend(spec(server.url, max_n=10, concurrency=4)) as backend:
        digit, coin = backend.render("Pick a random digit."), backend.render("Flip a coin.")
        params = SamplingParams(n=30, max_new_tokens=6)
        counts = backend.sample_many([SampleRequest(digit, params, 1),
                                      SampleRequest(coin, params, 2)])
        records = backend.call_records()
        alone = backend.sample(coin, params, 2)
    assert [sum(c.values()) for c in counts] == [30, 30]
    assert counts[1] == alone  # a unit's counts do not depend on its call's other units
    assert [r["usage"]["requests"] for r in records] == [3, 3]
    assert records[0]["system_fingerprints"] == ["fp_test"]


def test_the_probe_is_recorded_with_the_served_model(server):
    with load_backend(spec(server.url)) as backend:
        record = backend.backend_record()
        provenance = backend.provenance()
    assert record["probe"] == {
        "extra_params": True, "n_honoured": True, "seed_reproducible": True, "logprobs": True,
        "served_model": MODEL, "system_fingerprint": "fp_test",
    }
    assert record["endpoint"] == "completions" and record["prompt_rendering"] == "catalog"
    assert provenance["device"] == f"server {server.url.split('/')[2]}"
    assert "openai" in provenance["library_versions"]


# ------------------------------------------------------------------ chat stages


def test_a_chat_stage_without_a_tokenizer_goes_to_chat_completions(server):
    with load_backend(spec(server.url, "chat")) as backend:
        rendered = backend.render("Pick a random digit.")
        counts = backend.sample(rendered, SamplingParams(n=40, max_new_tokens=6), seed=3)
        record = backend.backend_record()
    assert json.loads(rendered) == {
        "messages": [{"role": "user", "content": "Pick a random digit."}], "model": MODEL}
    assert sum(counts.values()) == 40 and set(counts) <= set(DISTRIBUTION)
    path, body = server.requests[-1]
    assert path == "/v1/chat/completions" and body["messages"] == json.loads(rendered)["messages"]
    assert record["endpoint"] == "chat/completions" and record["prompt_rendering"] == "server"


def entropy_of_top(k: int) -> float:
    """The per-token entropy (bits) estimated from the served distribution's top k, the rest
    as one outcome: every served completion is one token."""
    top = sorted(DISTRIBUTION.values(), reverse=True)[:k]
    rest = 1 - sum(top)
    return -sum(p * math.log2(p) for p in (*top, rest) if p > 1e-12)


@pytest.mark.parametrize(("prompt_format", "k"), [("plain", 2), ("chat", 3), ("plain", 4)])
def test_the_token_entropy_is_estimated_from_the_top_logprobs(server, prompt_format, k):
    with load_backend(spec(server.url, prompt_format, max_n=25, entropy_top_k=k)) as backend:
        counts = backend.sample(backend.render("Pick a random digit."),
                                SamplingParams(n=100, max_new_tokens=6), seed=2)
    entropy = counts.token_entropy
    assert entropy.tokens == (100,)
    assert entropy.bits[0] == pytest.approx(100 * entropy_of_top(k), rel=1e-12)
    assert entropy.estimate.startswith(f"top-{k} logprobs")
    for body in server.sampling_requests()[2:]:
        if prompt_format == "chat":
            assert (body["logprobs"], body["top_logprobs"]) == (True, k)
        else:
            assert body["logprobs"] == k


def test_no_token_entropy_without_logprobs_or_when_turned_off(server):
    with load_backend(spec(server.url, entropy_top_k=0)) as backend:
        counts = backend.sample(backend.render("Pick a random digit."),
                                SamplingParams(n=20, max_new_tokens=6), seed=2)
    assert counts.token_entropy is None
    assert all("logprobs" not in body for body in server.sampling_requests()[2:])
    with CompatibleServer(model=MODEL, logprobs=False) as no_logprobs:
        with load_backend(spec(no_logprobs.url)) as backend:
            counts = backend.sample(backend.render("Pick a random digit."),
                                    SamplingParams(n=20, max_new_tokens=6), seed=2)
    assert counts.token_entropy is None and sum(counts.values()) == 20


def test_a_served_name_that_is_a_path_on_the_server_s_machine_is_rendered_by_the_server():
    """vLLM serves a model under its path unless told a name: not a directory here."""
    with CompatibleServer(model="/models/olmo-sft") as server:
        with load_backend(spec(server.url, "chat", source="/models/olmo-sft")) as backend:
            assert backend.backend_record()["prompt_rendering"] == "server"
            assert sum(backend.sample(backend.render("Pick a random digit."),
                                      SamplingParams(n=5, max_new_tokens=6), 1).values()) == 5


def test_a_tokenizer_option_that_does_not_load_is_one_line(server, tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_backend(spec(server.url, "chat", tokenizer=str(tmp_path / "missing")))
    assert one_line_error(error).startswith(f"backend option tokenizer='{tmp_path}/missing': ")


def test_a_chat_stage_with_the_tokenizer_is_rendered_as_a_local_backend_renders_it(
    server, tmp_path_factory
):
    model_dir = cached_tiny_model(tmp_path_factory)
    with load_backend(spec(server.url, "chat", tokenizer=str(model_dir))) as backend:
        rendered = backend.render("Pick a random digit.")
        backend.sample(rendered, SamplingParams(n=10, max_new_tokens=6), seed=3)
        record, provenance = backend.backend_record(), backend.provenance()
    with load_backend(ModelSpec(str(model_dir)), device="cpu") as local:
        assert rendered == local.render("Pick a random digit.")
        assert provenance["chat_template_hash"] == local.provenance()["chat_template_hash"]
        tokens = local.loaded.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        eos = local.loaded.eos_token_ids
    path, body = server.requests[-1]
    assert path == "/v1/completions" and body["prompt"] == tokens  # the same token ids
    assert body["stop_token_ids"] == eos and body["ignore_eos"] is True
    assert record["prompt_rendering"] == "catalog" and record["tokenizer_revision"]


def test_exact_mode_without_a_tokenizer_is_refused(server):
    with load_backend(spec(server.url)) as backend:
        with pytest.raises(InvalidInput, match="needs the model's tokenizer") as error:
            backend.option_probabilities(backend.render("Flip a coin."), {"heads": ["heads"]})
    one_line_error(error)


# ------------------------------------------------------------------ what servers do wrong


def test_429_and_500_answers_are_retried_with_backoff_then_succeed(server):
    with load_backend(spec(server.url, max_n=100)) as backend:
        server.fail_next([429, 500, 429])
        counts = backend.sample(backend.render("Pick a random digit."),
                                SamplingParams(n=100, max_new_tokens=6), seed=1)
    assert sum(counts.values()) == 100
    # the three refused attempts, then the answered one, all the same request
    bodies = server.sampling_requests()[2:]
    assert len(bodies) == 4 and all(body == bodies[0] for body in bodies)


def test_a_server_that_keeps_failing_is_one_line_after_the_retries(server):
    with load_backend(spec(server.url, max_retries=2)) as backend:
        server.fail_next([429] * 3)
        with pytest.raises(EndpointError) as error:
            backend.sample(backend.render("Pick a random digit."),
                           SamplingParams(n=10, max_new_tokens=6), seed=1)
    message = one_line_error(error)
    assert message.startswith(f"the server at {server.url} still answers 429")
    assert "after 2 retries" in message and "lower concurrency" in message


def test_a_server_that_ignores_n_is_refused_unless_max_n_is_1():
    with CompatibleServer(model=MODEL, honour_n=False) as server:
        with pytest.raises(ModelLoadError, match="ignores n") as error:
            load_backend(spec(server.url))
        assert "max_n=1" in one_line_error(error)
        with load_backend(spec(server.url, max_n=1, concurrency=4)) as backend:
            counts = backend.sample(backend.render("Pick a random digit."),
                                    SamplingParams(n=12, max_new_tokens=6), seed=1)
        assert sum(counts.values()) == 12
        assert all(body["n"] == 1 for body in server.sampling_requests()[2:])


def test_a_server_without_extra_parameters_samples_without_them_and_refuses_top_k():
    with CompatibleServer(model=MODEL, extra_params=False) as server:
        with load_backend(spec(server.url)) as backend:
            assert backend.backend_record()["probe"]["extra_params"] is False
            rendered = backend.render("Pick a random digit.")
            counts = backend.sample(rendered, SamplingParams(n=20, max_new_tokens=6), seed=1)
            with pytest.raises(InvalidInput, match="refuses top_k") as error:
                backend.sample(rendered, SamplingParams(n=20, top_k=5), seed=1)
        one_line_error(error)
        assert sum(counts.values()) == 20
        assert "top_k" not in server.sampling_requests()[-1]


def test_a_server_without_logprobs_or_extra_parameters_is_probed_without_them():
    with CompatibleServer(model=MODEL, extra_params=False, logprobs=False) as server:
        with load_backend(spec(server.url, "chat")) as backend:
            probe = backend.backend_record()["probe"]
            counts = backend.sample(backend.render("Pick a random digit."),
                                    SamplingParams(n=20, max_new_tokens=6), seed=1)
    assert (probe["extra_params"], probe["logprobs"], probe["n_honoured"]) == (False, False, True)
    assert sum(counts.values()) == 20
    # the probe: one refused request with both, one without the extra parameters, the
    # answered pair without logprobs; then the unit's one request
    assert len(server.sampling_requests()) == 1 + 1 + 2 + 1


def test_a_wrong_key_is_one_line_that_never_shows_the_key(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    with CompatibleServer(model=MODEL, key="the-right-key") as server:
        with pytest.raises(ModelLoadError) as error:
            load_backend(spec(server.url, api_key_env=KEY_VARIABLE))
    message = one_line_error(error)
    assert message == (f"the server at {server.url} refused the request (401) with the key in "
                       f"${KEY_VARIABLE}; check the API key")
    assert SECRET not in message


def test_the_key_comes_from_its_variable_only(monkeypatch):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # never read implicitly
    with CompatibleServer(model=MODEL, key=SECRET) as server:
        with pytest.raises(ModelLoadError, match=f"{KEY_VARIABLE} .* is not set") as error:
            load_backend(spec(server.url, api_key_env=KEY_VARIABLE))
        one_line_error(error)
        with pytest.raises(ModelLoadError, match="refused the request .401. with no key"):
            load_backend(spec(server.url))
        monkeypatch.setenv(KEY_VARIABLE, SECRET)
        with load_backend(spec(server.url, api_key_env=KEY_VARIABLE)) as backend:
            assert SECRET not in json.dumps([backend.backend_record(), backend.provenance()])


def test_a_dead_server_is_one_line_naming_the_url():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(ModelLoadError) as error:
        load_backend(spec(url, max_retries=0, timeout=5))
    assert one_line_error(error).startswith(f"cannot reach the server at {url} (")
    assert "check base_url and that the server is running" in str(error.value)


def test_a_server_slower_than_the_timeout_is_one_line():
    with CompatibleServer(model=MODEL) as server:
        with load_backend(spec(server.url, timeout=2, max_retries=0)) as backend:
            server.delay = 3.0
            with pytest.raises(EndpointError) as error:
                backend.sample(backend.render("Pick a random digit."),
                               SamplingParams(n=5, max_new_tokens=6), seed=1)
            server.delay = 0.0
    assert one_line_error(error) == (
        f"the server at {server.url} did not answer within 2 s; raise --backend-arg "
        "timeout=SECONDS or lower concurrency")


def test_a_wrong_url_path_and_an_unknown_model_are_one_line_each(server):
    wrong = server.url.removesuffix("/v1") + "/api"
    with pytest.raises(ModelLoadError) as error:
        load_backend(spec(wrong))
    assert one_line_error(error) == (
        f"{wrong} answered 404 Not Found (Not Found); check base_url (it usually ends with /v1)")
    with pytest.raises(ModelLoadError) as error:
        load_backend(spec(server.url, source="no-such-model"))
    assert one_line_error(error) == (
        f"the server at {server.url} does not serve model 'no-such-model' (The model "
        f"`no-such-model` does not exist.); it serves {MODEL}; register the served name as "
        "--source")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "backend openai needs the server's URL: --backend-arg base_url="),
        ({"base_url": "ftp://host/v1"}, "base_url='ftp://host/v1' is invalid: use text that is "
         "an http(s) URL"),
        ({"base_url": "http://me:pw@host/v1"}, "without user or password"),
        ({"base_url": "http://h/v1", "api_key_env": "1-BAD"}, "api_key_env='1-BAD' is invalid"),
        ({"base_url": "http://h/v1", "concurrency": "0"}, "concurrency='0' is invalid"),
        ({"base_url": "http://h/v1", "max_n": "many"}, "max_n='many' is invalid"),
        ({"base_url": "http://h/v1", "timeout": "-1"}, "timeout='-1' is invalid"),
        ({"base_url": "http://h/v1", "api_key": SECRET}, "has no option api_key"),
        ({"base_url": "http://h/v1", "entropy_top_k": "21"}, "entropy_top_k='21' is invalid"),
        ({"base_url": "http://h/v1", "entropy_top_k": "-1"}, "entropy_top_k='-1' is invalid"),
    ],
)
def test_bad_backend_args_are_one_clear_error(options, message):
    with pytest.raises(InvalidInput) as error:
        check_backend_options("openai", options)
    assert message in one_line_error(error)
    assert SECRET not in str(error.value)


# ------------------------------------------------------------------ through the CLI


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_catalog_ingest_through_a_server_stores_runs_usage_and_never_the_key(db_url, engine):
    env = {KEY_VARIABLE: SECRET}
    with CompatibleServer(model=MODEL, key=SECRET, poison="Random digit:") as server:
        added = cli("--db", db_url, "models", "add", "served", "--family", "api",
                    "--stage", "base", "--source", MODEL, "--plain", "--backend", "openai",
                    "--backend-arg", f"base_url={server.url}",
                    "--backend-arg", f"api_key_env={KEY_VARIABLE}",
                    "--backend-arg", "max_n=100", "--backend-arg", "max_retries=0", env=env)
        assert added.exit_code == 0, added.output
        result = cli("--db", db_url, "ingest", "--model", "served", "--task", "digit",
                     "--prompt", "plain", "--prompt", "terse", "--prompt", "polite",
                     "--samples", "300", "--max-new-tokens", "6", env=env)
        listed = cli("--db", db_url, "models", "list")
    # the poisoned prompt's unit fails alone; the others are stored whole
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: 1 units failed")
    assert f"the server at {server.url} answered 500" in result.output
    assert "Traceback" not in result.output and SECRET not in result.output
    assert SECRET not in listed.output and "served-model" in listed.output
    with engine.connect() as conn:
        runs = conn.execute(text(
            "SELECT r.id, r.status, r.error, r.library_versions, r.device, (SELECT "
            "COALESCE(SUM(count), 0) FROM completions c WHERE c.run_id = r.id) AS stored, "
            "(SELECT COUNT(*) FROM option_counts o WHERE o.run_id = r.id) AS options "
            "FROM runs r ORDER BY r.id")).all()
        dump = json.dumps([[str(v) for v in row] for table in (
            "models", "runs", "completions", "option_counts")
            for row in conn.execute(text(f"SELECT * FROM {table}")).all()])
    failed = [run for run in runs if run.status == "failed"]
    done = [run for run in runs if run.status == "done"]
    assert len(failed) == 1 and len(done) == len(runs) - 1 == 2
    assert failed[0].stored == failed[0].options == 0  # nothing partial
    assert "answered 500" in failed[0].error
    for run in done:
        record = _json(run.library_versions)["backend"]
        assert run.stored == 300
        assert record["probe"]["served_model"] == MODEL
        assert record["usage"]["requests"] == 3 and record["usage"]["completion_tokens"] > 0
        assert record["options"]["api_key_env"] == KEY_VARIABLE
    assert SECRET not in dump


def test_models_add_refuses_bad_openai_args_in_one_line(db_url):
    result = cli("--db", db_url, "models", "add", "served", "--family", "api", "--stage",
                 "sft", "--source", MODEL, "--backend", "openai", "--backend-arg",
                 "base_url=gpu-node-3:8000")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: model 'served': backend option base_url='gpu-node-3:8000' is invalid: use "
        "text that is an http(s) URL without user or password (keys go in api_key_env)"]
    assert "served" not in cli("--db", db_url, "models", "list").output


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def test_derived_unit_seeds_are_what_the_worker_sends():
    """The worker's unit seed, split by request index, is what reaches the server."""
    seed = unit_seed(0, "k" * 64)
    assert request_splits(130, seed, 64) == [
        (64, request_seed(seed, 0)), (64, request_seed(seed, 1)), (2, request_seed(seed, 2))]
    assert np.unique([s for _, s in request_splits(6400, seed, 64)]).size == 100
