"""Which benchmarks run in the suites, and how: each script with ``--smoke`` (tiny sizes,
seconds) as a real subprocess, so a benchmark that breaks fails CI.

``SMOKES`` run in the main suite (tests/test_benchmarks.py), ``VLLM_SMOKES`` in the vLLM
suite (tests/ingest/test_vllm_backend.py: they need vLLM). A new benchmark gets one entry:
script name -> (extra arguments, a line fragment its output must contain). ``{postgres}`` in
the arguments is the test PostgreSQL server's admin URL. Each smoke runs on one database
(a smoke is mostly processes importing their libraries: 85 s of CPU for all of them here):
PostgreSQL where a benchmark has code of its own for it (import_scale's COPY, the scratch
databases of trajectories, the workers' server), SQLite elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
POSTGRES = os.environ.get(
    "CATALOG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

SMOKES: dict[str, tuple[list[str], str]] = {
    "analysis_scale.py": (["--backends", "sqlite"], "| sqlite | "),
    "forest.py": ([], "units with identical counts both ways: 12/12"),
    "import_counts.py": ([], "read_sql run_id, option, count from v_counts"),
    "import_scale.py": (["--backends", "postgresql", "--postgres", "{postgres}"],
                        '"kind": "completions", "backend": "postgresql"'),
    "ingest_throughput.py": ([], "(c) floor of the N=2,000 batch shapes"),
    "normalize_throughput.py": ([], "weekday"),
    "report_build.py": ([], "report.html"),
    "scaffolds.py": ([], "fewshot@1: valid answers"),
    "serve.py": ([], "| demo-like | sqlite | "),
    "toylab_checkpoints.py": ([], "checkpoints=2: 5 models"),
    "toylab_training.py": ([], "test family (3 tasks x 4 prompts): wall"),
    "trajectories.py": (["--backends", "postgresql", "--postgres", "{postgres}"],
                        "| postgresql | "),
    "tree_memory.py": ([], "(b) stop checks, now"),
    "workers.py": (["--postgres", "{postgres}"], "| postgresql | 1 | "),
}
VLLM_SMOKES: dict[str, tuple[list[str], str]] = {
    "backends.py": ([], "vllm: loaded in"),
    "endpoints.py": ([], "best endpoint / best in-process vLLM"),
}


def run_smoke(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> --smoke ARGS`` from ``cwd`` (a scratch folder, so anything
    a script writes by mistake lands there), on this tree, writing no bytecode into it."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, str(BENCHMARKS / script), "--smoke",
            *(arg.format(postgres=POSTGRES) for arg in args)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
