"""What a GPU run needs, in its parts a CPU can check: max_memory (device_map="auto"), vLLM's
memory default, and a worker that stops on a dead CUDA context instead of burning units."""

from __future__ import annotations

import pytest
from tiny_models import PROMPTS, cached_tiny_model

from catalog.errors import InvalidInput, ModelLoadError
from ingest.backends import (
    BACKENDS,
    DeviceLost,
    ModelSpec,
    SamplingParams,
    TableBackend,
    is_sticky_device_error,
    load_backend,
    register_backend,
)
from ingest.models import parse_max_memory
from ingest.vllm_backend import GPU_MEMORY_UTILIZATION, memory_defaults
from ingest.worker import run_worker
from table_workers import plan_grid, statuses, table_models


def test_max_memory_text_becomes_accelerates_mapping():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=100GiB") == {
        0: "70GiB", 1: "70GiB", "cpu": "100GiB"}
    assert parse_max_memory("") == {}
    for bad in ("70GiB", "gpu=70GiB", "0=70", "0=lots", "0=-1GiB"):
        assert parse_max_memory(bad) is None


def test_max_memory_loads_through_device_map_auto(tmp_path_factory):
    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    spread = load_backend(ModelSpec(str(path), backend_options={"max_memory": "cpu=2GiB"}),
                          device="cpu")
    plain = load_backend(ModelSpec(str(path)), device="cpu")
    rendered = plain.render(PROMPTS[0], "chat")
    params = SamplingParams(n=300, max_new_tokens=4)
    assert dict(spread.sample(rendered, params, 1)) == dict(plain.sample(rendered, params, 1))
    with pytest.raises(ModelLoadError, match="does not fit in max_memory"):  # it is applied
        load_backend(ModelSpec(str(path), backend_options={"max_memory": "cpu=0.01MB"}),
                     device="cpu")
    for bad in ("70GiB", "0=70", 3):
        with pytest.raises(InvalidInput, match="max_memory"):
            load_backend(ModelSpec(str(path), backend_options={"max_memory": bad}),
                         device="cpu")


def test_vllm_leaves_room_on_a_gpu_unless_told():
    assert memory_defaults("cuda", {}) == {"gpu_memory_utilization": GPU_MEMORY_UTILIZATION}
    assert GPU_MEMORY_UTILIZATION < 0.92  # vLLM's own default leaves no room
    assert memory_defaults("cuda", {"gpu_memory_utilization": 0.5}) == {
        "gpu_memory_utilization": 0.5}
    assert memory_defaults("cuda", {"kv_cache_memory_bytes": 10}) == {
        "kv_cache_memory_bytes": 10}
    assert memory_defaults("cpu", {}) == {"kv_cache_memory_bytes": 2 * 1024**3}


def test_sticky_cuda_errors_are_told_from_the_rest():
    assert is_sticky_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_sticky_device_error(
        RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_sticky_device_error(RuntimeError("CUDA error: out of memory"))
    assert not is_sticky_device_error(ValueError("the prompt is too long"))


class DeadGpuTable(TableBackend):
    """The table backend whose accelerator dies at the first sampling call."""

    def sample(self, rendered, params, seed):
        raise RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors ...")


@pytest.fixture
def dead_gpu():
    register_backend("dead-gpu", DeadGpuTable)
    yield
    BACKENDS.pop("dead-gpu")


def test_a_worker_releases_its_units_and_stops_on_a_dead_gpu(engine, tmp_path, dead_gpu):
    from sqlalchemy import text

    table_models(engine, tmp_path, ["m-a"], backend_options={"units_per_call": 2})
    plan_grid(engine, ["m-a"], prompts=("plain", "terse", "polite"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET backend = 'dead-gpu'"))
    with pytest.raises(DeviceLost, match=r"assert triggered\); its units were released"):
        run_worker(engine)
    assert statuses(engine) == {"pending": 3}  # released, not failed
    with engine.connect() as conn:
        assert conn.execute(text("SELECT max(attempts) FROM runs")).scalar() == 0
