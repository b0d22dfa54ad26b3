"""Benchmark: checkpoint trajectories against the same analysis without them.

Study scale with checkpoints: 2 families x 40 checkpoints (base, then 13 each of sft, dpo
and rl) x 15 tasks x 20 prompts (10 options, 1000 samples per prompt; planted synthetic
counts, ``catalog.toylab.synthetic.checkpoint_counts``: each checkpoint mixes the liquid base
prompts with the seed, the seed's share rising over the SFT checkpoints), 1000 bootstrap
replicates. Measured, each in a fresh Python process (wall and CPU seconds, peak memory):

- in memory: ``analysis.crystallization.analyze_data`` of the counts, with
  ``trajectories=False`` and ``trajectories=True``;
- from a store (``--backends``, stored through ``catalog.imports.import_counts``):
  ``analysis.crystallization.analyze`` plus the JSON rendering, i.e. what ``catalog analyze
  --bootstrap 1000 --format json`` does after start-up, with ``--no-trajectories`` and with
  trajectories (the default with checkpoints).

Target (issue 13): with trajectories at most 10x the same analysis without them.

    python benchmarks/trajectories.py                          # everything (~10 min here)
    python benchmarks/trajectories.py --tasks 3 --backends ""  # a quick look, in memory only
    python benchmarks/trajectories.py --smoke --backends sqlite  # seconds: does it run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis_scale import scratch_database, _vmhwm_mib

STAGES = ("sft", "dpo", "rl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--options", type=int, default=10)
    parser.add_argument("--steps", type=int, default=13, help="Checkpoints per stage after base.")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="Admin URL of the server that gets the scratch databases.")
    parser.add_argument("--smoke", action="store_true",
                        help="1 family x 2 tasks x 4 prompts x 4 options, 3 steps, bootstrap 5")
    args = parser.parse_args()
    if args.smoke:
        args.families, args.tasks, args.prompts, args.options = 1, 2, 4, 4
        args.steps, args.bootstrap = 3, 5

    shape = {"families": args.families, "tasks": args.tasks, "prompts": args.prompts,
             "options": args.options, "steps": args.steps}
    rows = []
    with tempfile.TemporaryDirectory(prefix="trajectories-") as tmp:
        workdir = Path(tmp)
        counts = workdir / "counts.parquet"
        _child("generate", str(counts), json.dumps(shape))
        rows.append(("in memory", *_pair("memory", str(counts), args.bootstrap)))
        for backend in filter(None, args.backends.split(",")):
            with scratch_database(backend, args.postgres, workdir) as url:
                _child("import", url, str(counts.with_suffix(".import.parquet")))
                rows.append((backend, *_pair("store", url, args.bootstrap)))
    checkpoints = 1 + len(STAGES) * args.steps
    print(f"{args.families} families x {checkpoints} checkpoints x {args.tasks} tasks x "
          f"{args.prompts} prompts ({args.options} options), {args.bootstrap} replicates\n")
    print("| analysis | without trajectories: wall s (CPU s) | with: wall s (CPU s) | "
          "ratio wall (CPU) | peak MiB with |")
    print("|---|---|---|---|---|")
    for name, off, on in rows:
        print(f"| {name} | {off['wall']:.1f} ({off['cpu']:.1f}) | {on['wall']:.1f} "
              f"({on['cpu']:.1f}) | {on['wall'] / off['wall']:.1f} ({on['cpu'] / off['cpu']:.1f})"
              f" | {on['maxrss_mib']:.0f} |")


def _pair(kind: str, source: str, bootstrap: int) -> tuple[dict, dict]:
    off = _child(kind, source, str(bootstrap), "off")
    on = _child(kind, source, str(bootstrap), "on")
    assert on["trajectories"] > 0 and off["trajectories"] == 0
    print(f"{kind} {source.split(':')[0]}: {json.dumps([off, on])}", file=sys.stderr)
    return off, on


def _child(kind: str, *args: str) -> dict:
    """Run one step in a fresh Python process; its JSON result comes back."""
    output = subprocess.run(
        [sys.executable, __file__, "_child", kind, *args], check=True, stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _run_child(kind: str, *args: str) -> dict:
    if kind == "generate":
        return _generate(Path(args[0]), **json.loads(args[1]))
    if kind == "import":
        from catalog.db import open_catalog
        from catalog.imports import import_counts

        engine = open_catalog(args[0])
        import_counts(engine, args[1])
        engine.dispose()
        return {}
    from analysis.crystallization import AnalysisOptions, analyze, analyze_data
    from analysis.frames import counts_from_frame
    from analysis.render import render

    source, bootstrap, trajectories = args[0], int(args[1]), args[2] == "on"
    options = AnalysisOptions(bootstrap=bootstrap, seed=1, trajectories=trajectories)
    if kind == "memory":
        import polars as pl

        data = counts_from_frame(pl.read_parquet(source))
        started = time.perf_counter(), time.process_time()
        result = analyze_data(data, options)
    else:
        from catalog.db import open_catalog

        engine = open_catalog(source)
        started = time.perf_counter(), time.process_time()
        result = analyze(engine, options=options)
        render(result, "json")
        engine.dispose()
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    return {
        "wall": wall,
        "cpu": cpu,
        "trajectories": len(result.trajectories),
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_mib": _vmhwm_mib(),
    }


def _generate(path: Path, families, tasks, prompts, options, steps) -> dict:
    import numpy as np

    from catalog.toylab.synthetic import checkpoint_counts

    checkpoints = [("base", None)] + [(s, 100 * i) for s in STAGES for i in range(1, steps + 1)]
    weights = np.clip(np.arange(len(checkpoints)) / steps, 0, 1)  # crystallizes during sft
    frame, _ = checkpoint_counts(
        checkpoints=checkpoints, weights=list(weights),
        families=[f"family{f:02d}" for f in range(families)],
        tasks=[f"bench_task{t:02d}" for t in range(tasks)], n_prompts=prompts,
        n_options=options, n_samples=1000, random_seed=2024,
    )
    frame.write_parquet(path)
    # Prompt ids come from the file order on import.
    frame.drop("prompt_id").write_parquet(path.with_suffix(".import.parquet"))
    return {"rows": frame.height}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(_run_child(sys.argv[2], *sys.argv[3:])))
    else:
        main()
