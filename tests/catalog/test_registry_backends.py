"""A model's backend and backend options in the registry and in experiment files."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from catalog import registry
from catalog.db import session_scope
from catalog.errors import InvalidInput
from catalog.schema import Model
from ingest.backends import check_backend_options

VLLM = {"backend": "vllm", "backend_options": {"tensor_parallel_size": "2",
                                               "enforce_eager": "true"}}


def add(session, **fields):
    return registry.add_model(session, name="m-sft", family="fam", stage="sft",
                              source="org/m-sft", **fields)


def test_a_model_stores_its_backend_and_checked_options(engine):
    with session_scope(engine) as session:
        plain = registry.add_model(session, name="m-base", family="fam", stage="base",
                                   source="org/m-base")
        assert (plain.backend, plain.backend_options) == ("transformers", {})
        model = add(session, check_backend=check_backend_options, **VLLM)
        assert model.backend == "vllm"
        assert model.backend_options == {"tensor_parallel_size": 2, "enforce_eager": True}
    with session_scope(engine) as session:
        stored = registry.get_model(session, "m-sft")
        assert stored.backend_options == {"tensor_parallel_size": 2, "enforce_eager": True}
        # the same model again changes nothing; other options are another model
        assert add(session, check_backend=check_backend_options, **VLLM).id == stored.id
        with pytest.raises(InvalidInput, match="already registered with backend_options"):
            add(session, backend="vllm", backend_options={"tensor_parallel_size": 4},
                check_backend=check_backend_options)
        with pytest.raises(InvalidInput, match="already registered with backend 'vllm'"):
            add(session, backend="transformers", check_backend=check_backend_options)


def test_bad_backends_and_options_are_refused_before_anything_is_stored(engine):
    with session_scope(engine) as session:
        with pytest.raises(InvalidInput, match="model 'm-sft': unknown backend 'hub'"):
            add(session, backend="hub", check_backend=check_backend_options)
        with pytest.raises(InvalidInput,
                           match="model 'm-sft': backend option tensor_parallel_size=0"):
            add(session, backend="vllm", backend_options={"tensor_parallel_size": 0},
                check_backend=check_backend_options)
        with pytest.raises(InvalidInput, match="backend options must be a table"):
            add(session, backend="vllm", backend_options=["enforce_eager"])
        with pytest.raises(InvalidInput, match="backend must be a backend's name"):
            add(session, backend="")
        # options are never stored unchecked: a caller without the check is a bug
        with pytest.raises(TypeError, match="stored only once checked"):
            add(session, backend="vllm", backend_options={"tensor_parallel_size": 2})
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Model)) == 0


def test_experiment_files_name_backends_and_their_options(engine, tmp_path):
    path = tmp_path / "fam.toml"
    path.write_text("""
[[families]]
name = "fam"

  [[families.stages]]
  stage = "base"
  source = "org/base"

  [[families.stages]]
  stage = "sft"
  source = "org/sft"
  backend = "vllm"
  backend_options = { gpu_memory_utilization = 0.85, enforce_eager = true }
""")
    with session_scope(engine) as session:
        base, sft = registry.load_experiment(session, path, check_backend=check_backend_options)
        assert (base.backend, base.backend_options) == ("transformers", {})
        assert (sft.backend, sft.backend_options) == (
            "vllm", {"gpu_memory_utilization": 0.85, "enforce_eager": True}
        )
    path.write_text(path.read_text().replace("0.85", "1.85").replace("org/", "lab/")
                    .replace('"fam"', '"fam2"'))
    with session_scope(engine) as session:
        with pytest.raises(InvalidInput) as error:
            registry.load_experiment(session, path, check_backend=check_backend_options)
    assert str(error.value) == (
        f"{path}: families[0].stages[1]: model 'lab/sft': backend option "
        "gpu_memory_utilization=1.85 is invalid: use a number in (0, 1]"
    )
