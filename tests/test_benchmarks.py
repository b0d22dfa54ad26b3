"""Every benchmark runs with ``--smoke`` (tiny sizes, seconds), as a real subprocess: it must
exit 0 and print what a run prints, so a benchmark that breaks fails the suite. The list is
in tests/benchmark_smokes.py; the vLLM-only benchmarks run in the vLLM suite.

The selected smokes start together, as many at a time as there are CPUs: most of a smoke is
a Python process importing its libraries, so on a 2-core machine this halves their wall time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from benchmark_smokes import BENCHMARKS, SMOKES, VLLM_SMOKES, run_smoke


def benchmarks_folder() -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in BENCHMARKS.iterdir()}


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """Each selected script's finished process, and the benchmarks folder before them."""
    before = benchmarks_folder()
    selected = sorted({
        item.callspec.params["script"] for item in request.session.items
        if item.originalname == "test_benchmark_smoke_runs" and hasattr(item, "callspec")
    }) or sorted(SMOKES)  # none selected: a test below that needs the runs was
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        futures = {
            script: pool.submit(run_smoke, script, SMOKES[script][0],
                                tmp_path_factory.mktemp(script.removesuffix(".py")))
            for script in selected
        }
    return before, {script: future.result() for script, future in futures.items()}


@pytest.mark.parametrize("script", sorted(SMOKES))
def test_benchmark_smoke_runs(script, smoke_runs):
    result = smoke_runs[1][script]
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert SMOKES[script][1] in result.stdout, output[-5000:]


def test_every_benchmark_has_a_smoke_run():
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    assert scripts == set(SMOKES) | set(VLLM_SMOKES)
    assert not set(SMOKES) & set(VLLM_SMOKES)


def test_the_smokes_write_nothing_into_the_benchmarks_folder(smoke_runs):
    # Outputs go to scratch folders; the figures in benchmarks/README.md are edited by hand.
    before, runs = smoke_runs
    assert runs
    assert benchmarks_folder() == before
