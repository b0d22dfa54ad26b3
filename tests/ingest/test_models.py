"""Model loading: local directories load like hub models; unsafe or missing models are refused
with one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from tiny_models import cached_tiny_model, gguf_copy, pickle_copy

from catalog import prompting
from catalog.errors import InvalidInput, ModelLoadError
from ingest.backends import LoadOptions, ModelSpec, SamplingParams, load_backend
from ingest.exact import option_probabilities
from ingest.models import TransformersBackend, load_model, resolve_device
from ingest.sampling import encode_prompt

PINNED = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory, train_steps=80)


@pytest.fixture(scope="module")
def pickle_dir(model_dir, tmp_path_factory):
    return pickle_copy(model_dir, tmp_path_factory.mktemp("pickled") / "model")


def one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_local_directory_loads_in_eval_mode_with_provenance(model_dir):
    backend = load_backend(ModelSpec(str(model_dir)), device="cpu")
    assert isinstance(backend, TransformersBackend)
    assert not backend.loaded.model.training
    provenance = backend.provenance()
    assert provenance["model_revision"].startswith("sha256:")
    assert provenance["dtype"] == "float32"
    assert provenance["device"] == "cpu"
    tokenizer = backend.loaded.tokenizer
    assert provenance["chat_template_hash"] == prompting.text_hash(tokenizer.chat_template)
    assert {"torch", "transformers", "tokenizers"} <= set(provenance["library_versions"])
    assert backend.loaded.eos_token_ids == sorted(
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
    )


def test_render_uses_the_chat_template_or_the_plain_scaffold(model_dir):
    backend = load_backend(ModelSpec(str(model_dir), prompt_format="plain"), device="cpu")
    assert backend.render("Flip a coin.") == "Question: Flip a coin.\nAnswer:"
    assert backend.render("Flip a coin.", "chat") == (
        "<|im_start|>user\nFlip a coin.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_dtype_is_applied_and_recorded(model_dir):
    backend = load_backend(ModelSpec(str(model_dir)), device="cpu", dtype="bfloat16")
    assert backend.provenance()["dtype"] == "bfloat16"
    assert next(backend.loaded.model.parameters()).dtype == torch.bfloat16
    counts = backend.sample(
        backend.render("Flip a coin."), SamplingParams(n=50, max_new_tokens=3), 0
    )
    assert sum(counts.values()) == 50


def test_revision_of_a_local_directory_tracks_its_files(model_dir, tmp_path):
    cpu = LoadOptions(device="cpu")
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    first = load_model(ModelSpec(str(copy)), cpu).revision
    assert load_model(ModelSpec(str(model_dir)), cpu).revision == first
    (copy / "generation_config.json").write_text('{"eos_token_id": 2}')
    assert load_model(ModelSpec(str(copy)), cpu).revision != first


def test_directory_without_weights_is_refused(model_dir, tmp_path):
    empty = tmp_path / "no_weights"
    shutil.copytree(model_dir, empty)
    (empty / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_backend(ModelSpec(str(empty)), device="cpu")
    assert "has no weights" in one_line_error(error)


def test_pickle_weights_need_allow_pickle(pickle_dir, model_dir):
    assert (pickle_dir / "pytorch_model.bin").exists()
    with pytest.raises(ModelLoadError) as error:
        load_backend(ModelSpec(str(pickle_dir)), device="cpu")
    assert "--allow-pickle" in one_line_error(error)
    trusted = load_backend(ModelSpec(str(pickle_dir)), device="cpu", allow_pickle=True)
    safe = load_backend(ModelSpec(str(model_dir)), device="cpu")
    params = SamplingParams(n=300, max_new_tokens=3)
    rendered = safe.render("Pick a random digit.")
    # the same weights in both formats
    assert trusted.sample(rendered, params, seed=1) == safe.sample(rendered, params, seed=1)


@pytest.mark.parametrize("revision", [None, "main", "v1.0", PINNED[:12]])
def test_remote_code_needs_a_pinned_commit(model_dir, revision):
    spec = ModelSpec(str(model_dir), revision=revision, trust_remote_code=True)
    with pytest.raises(ModelLoadError) as error:
        load_backend(spec, device="cpu")
    assert "pinned 40-hex commit" in one_line_error(error)


def test_remote_code_with_a_pinned_commit_loads(model_dir):
    spec = ModelSpec(str(model_dir), revision=PINNED, trust_remote_code=True)
    assert load_backend(spec, device="cpu").provenance()["model_revision"].startswith("sha256:")


def test_missing_directory_and_file_source_are_refused(model_dir, tmp_path):
    with pytest.raises(ModelLoadError) as missing:
        load_backend(ModelSpec(str(tmp_path / "nowhere")), device="cpu")
    assert "does not exist" in one_line_error(missing)
    with pytest.raises(ModelLoadError) as a_file:
        load_backend(ModelSpec(str(model_dir / "config.json")), device="cpu")
    assert "not a directory" in one_line_error(a_file)


def test_gguf_file_loads_the_same_model(model_dir, tmp_path):
    """The gguf_file path (the "gguf" extra): a float32 GGUF of the tiny model gives the same
    next-token probabilities and the same exact-mode answer as its safetensors original."""
    directory = gguf_copy(model_dir, tmp_path / "gguf")
    from_gguf = load_backend(ModelSpec(str(directory), gguf_file="tiny.gguf"), device="cpu")
    original = load_backend(ModelSpec(str(model_dir)), device="cpu")
    assert "gguf" in from_gguf.provenance()["library_versions"]
    assert (
        from_gguf.provenance()["chat_template_hash"] == original.provenance()["chat_template_hash"]
    )
    rendered = original.render("Pick a random digit.")
    assert from_gguf.render("Pick a random digit.") == rendered
    ids = torch.tensor([encode_prompt(original.loaded.tokenizer, rendered)])
    assert encode_prompt(from_gguf.loaded.tokenizer, rendered) == ids[0].tolist()
    with torch.inference_mode():
        expected = torch.softmax(original.loaded.model(ids).logits[0, -1], -1)
        actual = torch.softmax(from_gguf.loaded.model(ids).logits[0, -1], -1)
    assert torch.allclose(actual, expected, atol=1e-5)
    # GGUF stores one EOS id, so score both with the original's EOS ids
    forms = {"7": ["7"], "3": ["3"]}
    eos = original.loaded.eos_token_ids
    exact = option_probabilities(
        from_gguf.loaded.model, from_gguf.loaded.tokenizer, rendered, forms, eos_token_ids=eos
    )
    assert exact.covered_mass == pytest.approx(
        original.option_probabilities(rendered, forms).covered_mass, rel=1e-4
    )


def test_missing_gguf_file_is_refused(model_dir):
    with pytest.raises(ModelLoadError) as error:
        load_backend(ModelSpec(str(model_dir), gguf_file="model.Q4_0.gguf"), device="cpu")
    assert "GGUF file 'model.Q4_0.gguf' not found" in one_line_error(error)


def test_cuda_device_is_refused_without_cuda():
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_chat_format_without_a_chat_template_is_refused(model_dir, tmp_path):
    plain = tmp_path / "no_template"
    shutil.copytree(model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    backend = load_backend(ModelSpec(str(plain), prompt_format="plain"), device="cpu")
    assert backend.provenance()["chat_template_hash"] is None
    with pytest.raises(InvalidInput, match="no chat template"):
        backend.render("Flip a coin.", "chat")


def test_unknown_hub_id_offline_is_one_clear_line():
    """The real hub code path, offline: transformers' error becomes one ModelLoadError line."""
    code = (
        "from catalog.errors import ModelLoadError\n"
        "from ingest.backends import ModelSpec, load_backend\n"
        "try:\n"
        "    load_backend(ModelSpec('no-such-org/no-such-model', revision='main'), device='cpu')\n"
        "except ModelLoadError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cannot load model 'no-such-org/no-such-model' (revision main)")
    assert "Hugging Face Hub" in lines[0]


def test_ingest_modules_import_without_torch():
    code = (
        "import sys\n"
        "import ingest.backends, ingest.models, ingest.sampling, ingest.exact\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
