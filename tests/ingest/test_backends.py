"""The backend interface: parameter validation, the registry, and the table backend."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scipy.stats import binomtest

from catalog.errors import InvalidInput, ModelLoadError
from ingest.backends import (
    ExactDistribution,
    ModelSpec,
    SamplingParams,
    TableBackend,
    load_backend,
)


SIGNIFICANCE = 0.01  # binomial test of the table backend's counts: reject at the 1% level


@pytest.fixture
def table_path(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(
        json.dumps(
            {
                "default": {"7": 6, " 3": 3, "I pick 5.": 1},
                "prompts": {"Flip a coin.": {"heads": 0.5, "Heads": 0.25, "tails": 0.25}},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": -3},
        {"n": 1.5},
        {"n": 10, "temperature": 0},
        {"n": 10, "top_p": 0},
        {"n": 10, "top_p": 1.2},
        {"n": 10, "top_k": -1},
        {"n": 10, "max_new_tokens": 0},
        {"n": 10, "stop": ("",)},
    ],
)
def test_sampling_params_reject_bad_values(kwargs):
    with pytest.raises(InvalidInput):
        SamplingParams(**kwargs)


def test_sampling_params_normalize_top_k_zero_and_single_stop_string():
    params = SamplingParams(n=5, top_k=0, stop="\n")
    assert params.top_k is None
    assert params.stop == ("\n",)
    assert params.to_dict() == {
        "n": 5,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": None,
        "max_new_tokens": 24,
        "stop": ["\n"],
    }


def test_model_spec_rejects_unknown_prompt_format():
    with pytest.raises(InvalidInput, match="prompt format"):
        ModelSpec("some/model", prompt_format="markdown")


def table_spec(path, **fields) -> ModelSpec:
    return ModelSpec(str(path), backend="table", **fields)


def test_the_spec_names_its_backend_and_a_source_prefix_means_nothing(table_path):
    assert ModelSpec("HuggingFaceTB/SmolLM2-135M-Instruct").backend == "transformers"
    assert isinstance(load_backend(table_spec(table_path)), TableBackend)
    # the old "table:" prefix is no backend selector: it is a (missing) table file's name
    with pytest.raises(ModelLoadError, match="cannot read table model"):
        load_backend(table_spec(f"table:{table_path}"))


def test_load_backend_rejects_bad_device_dtype_and_batch_size(table_path):
    spec = table_spec(table_path)
    for kwargs in ({"device": "tpu"}, {"dtype": "float8"}, {"batch_size": 0}):
        with pytest.raises(InvalidInput):
            load_backend(spec, **kwargs)


def test_table_backend_samples_exact_counts_reproducibly(table_path):
    backend = load_backend(table_spec(table_path))
    assert isinstance(backend, TableBackend)
    rendered = backend.render("Pick a digit.", "chat")
    counts = backend.sample(rendered, SamplingParams(n=1000), seed=7)
    assert sum(counts.values()) == 1000
    assert set(counts) <= {"7", " 3", "I pick 5."}
    assert backend.sample(rendered, SamplingParams(n=1000), seed=7) == counts
    assert backend.sample(rendered, SamplingParams(n=1000), seed=8) != counts
    # The table gives "7" probability 6 / 10: two-sided binomial test (fixed seed).
    assert binomtest(counts["7"], 1000, 0.6).pvalue > SIGNIFICANCE


def test_table_backend_uses_the_prompt_table_and_scores_surface_forms(table_path):
    backend = load_backend(table_spec(table_path, prompt_format="plain"))
    rendered = backend.render("Flip a coin.", "plain")
    assert rendered == "Question: Flip a coin.\nAnswer:"
    assert set(backend.sample(rendered, SamplingParams(n=50), seed=1)) <= {
        "heads",
        "Heads",
        "tails",
    }
    exact = backend.option_probabilities(
        rendered, {"heads": ["heads", "Heads"], "tails": ["tails"]}
    )
    assert exact == ExactDistribution({"heads": 0.75, "tails": 0.25}, 1.0)
    partial = backend.option_probabilities(rendered, {"heads": ["heads"]})
    assert partial.probabilities == {"heads": 1.0}
    assert partial.covered_mass == pytest.approx(0.5)


def test_surface_form_shared_by_two_options_is_rejected(table_path):
    backend = load_backend(table_spec(table_path))
    with pytest.raises(InvalidInput, match="belongs to both"):
        backend.option_probabilities("x", {"a": ["7"], "b": ["7"]})


def test_table_backend_provenance_pins_the_file_content(table_path):
    first = load_backend(table_spec(table_path)).provenance()
    table_path.write_text(json.dumps({"default": {"1": 1}}))
    second = load_backend(table_spec(table_path)).provenance()
    assert first["model_revision"].startswith("sha256:")
    assert first["model_revision"] != second["model_revision"]
    assert set(first) == {
        "model_revision",
        "dtype",
        "device",
        "chat_template_hash",
        "library_versions",
    }


def test_missing_or_malformed_table_is_a_one_line_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read table model") as missing:
        load_backend(table_spec(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ModelLoadError, match="not valid JSON") as malformed:
        load_backend(table_spec(bad))
    assert "\n" not in str(missing.value) + str(malformed.value)


def test_importing_and_using_the_table_backend_does_not_import_torch(table_path):
    code = (
        "import sys\n"
        "from ingest.backends import ModelSpec, SamplingParams, load_backend\n"
        f"b = load_backend(ModelSpec({str(table_path)!r}, backend='table'))\n"
        "b.sample(b.render('x', 'chat'), SamplingParams(n=3), seed=0)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
