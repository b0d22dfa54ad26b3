"""Benchmark: `catalog serve` page latency, first (computing) and cached, on two stores.

1. Demo-like: raw completions of one family (base, SFT, DPO) on 4 bundled tasks x 12 prompts,
   1000 samples per prompt (the size of `catalog demo`'s store), imported with
   ``catalog.imports.import_completions``.
2. Big: planted synthetic counts (catalog/toylab/synthetic.py, as benchmarks/analysis_scale.py)
   of F families x 4 stages x T tasks x P prompts x O options, imported with
   ``catalog.imports.import_counts``.

For each store and database, a real server (``python -m catalog.cli serve --port 0``) is
started and every page is fetched twice over HTTP: the first request of the overview runs
the analysis of the whole store, the first of a task page draws its figures; the second
request of each is served from the cache (one query for the store state, then rendering).
Targets (issue 20): cached pages within 2 s on the demo's store, within 5 s on the big one.

    python benchmarks/serve.py                         # demo-like + big (3 x 4 x 5 x 200 x 50)
    python benchmarks/serve.py --smoke                 # tiny, seconds
    python benchmarks/serve.py --families 10 --tasks 15  # the 6M-row store of analysis_scale
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis_scale import scratch_database  # a sibling script: benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("base", "sft", "dpo", "rl")
DEMO_TASKS = ("digit", "coin", "color", "weekday")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--options", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="Admin URL of the server that gets the scratch databases.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny stores on SQLite only (a check that the benchmark runs).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    if args.smoke:
        args.families, args.tasks, args.prompts, args.options, args.samples = 1, 1, 10, 5, 100
        args.backends = "sqlite"
    big = {"families": args.families, "tasks": args.tasks, "prompts": args.prompts,
           "options": args.options, "samples": args.samples}
    demo = {"prompts": 4 if args.smoke else 12, "samples": 100 if args.smoke else 1000,
            "tasks": DEMO_TASKS[:2] if args.smoke else DEMO_TASKS}
    figures: dict = {"big": big, "rows": args.families * len(STAGES) * args.tasks
                     * args.prompts * args.options, "results": []}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        workdir = Path(tmp)
        demo_file = _demo_completions(workdir / "demo.jsonl", **demo)
        big_file = _big_counts(workdir / "big.parquet", **big)
        for backend in args.backends.split(","):
            for store, path, importer in (("demo-like", demo_file, "import_completions"),
                                          ("big", big_file, "import_counts")):
                with scratch_database(backend, args.postgres, workdir) as url:
                    seconds = _import(url, path, importer)
                    pages = _pages(url)
                    figures["results"].append({"store": store, "database": backend,
                                               "import_seconds": seconds, "pages": pages})
                    print(f"{store} on {backend}: imported in {seconds:.1f} s; "
                          + ", ".join(f"{p['page']} {p['first']:.2f}/{p['cached']:.2f} s"
                                      for p in pages), file=sys.stderr)
    print(_markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


# ----- stores -------------------------------------------------------------------------------


def _demo_completions(path: Path, tasks, prompts: int, samples: int) -> Path:
    """One family (base, SFT, DPO): base prompts answer each their own way, later stages like
    the third prompt; a few invalid answers; one record per distinct text with its count."""
    import numpy as np

    from catalog.tasks import bundled_task

    rng = np.random.default_rng(7)
    with path.open("w") as out:
        for task in tasks:
            definition = bundled_task(task)
            options = list(definition.options)
            keys = [p.key for p in definition.prompts][:prompts]
            base = rng.dirichlet(np.full(len(options), 0.3), size=len(keys))
            for order, stage in enumerate(("base", "sft", "dpo")):
                for p, key in enumerate(keys):
                    counts = rng.multinomial(samples, base[p] if stage == "base" else base[2])
                    for option, n in zip(options, counts):
                        for text, share in ((f" {option}", 0.7), (f" {option.capitalize()}.", 0.3)):
                            k = int(round(n * share))
                            if k:
                                out.write(json.dumps({
                                    "family": "toy", "stage": stage, "stage_order": order,
                                    "model": f"toy-{stage}", "task": task, "prompt": key,
                                    "completion": text, "count": k, "temperature": 1.0,
                                    "max_new_tokens": 8}) + "\n")
                    out.write(json.dumps({
                        "family": "toy", "stage": stage, "stage_order": order,
                        "model": f"toy-{stage}", "task": task, "prompt": key,
                        "completion": " I would rather not say.", "count": 3,
                        "temperature": 1.0, "max_new_tokens": 8}) + "\n")
    return path


def _big_counts(path: Path, families, tasks, prompts, options, samples) -> Path:
    from catalog.toylab.synthetic import planted_counts

    frame, _ = planted_counts(
        families=[f"family{f:02d}" for f in range(families)], stages=STAGES,
        tasks=[f"bench_task{t:02d}" for t in range(tasks)], n_prompts=prompts,
        n_options=options, n_samples=samples, random_seed=2024,
    )
    frame.drop("prompt_id").write_parquet(path)
    return path


def _import(url: str, path: Path, importer: str) -> float:
    from catalog import imports
    from catalog.db import open_catalog

    engine = open_catalog(url)
    start = time.perf_counter()
    getattr(imports, importer)(engine, path)
    seconds = time.perf_counter() - start
    engine.dispose()
    return seconds


# ----- pages --------------------------------------------------------------------------------


def _pages(url: str) -> list[dict]:
    """Start the server, fetch each page twice, stop it (SIGTERM)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "catalog.cli", "serve", "--port", "0", "--db", url],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = server.stdout.readline()  # "serving <db url> read-only at http://127.0.0.1:PORT/"
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        results = []
        overview = _timed(port, "/")
        results.append({"page": "overview", **overview})
        task = re.search(r'href="(/task/[^"?]+)\?', overview["body"]).group(1)
        results.append({"page": "task", **_timed(port, task)})
        body = _get(port, task)[1]
        samples = re.search(r'href="(/samples\?[^"]+)"', body).group(1).replace("&amp;", "&")
        results.append({"page": "samples", **_timed(port, samples)})
        results.append({"page": "queue", **_timed(port, "/queue")})
        for r in results:
            del r["body"]
        return results
    finally:
        server.terminate()
        server.wait(timeout=60)


def _timed(port: int, path: str) -> dict:
    start = time.perf_counter()
    status, body = _get(port, path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again, _ = _get(port, path)
    cached = time.perf_counter() - start
    if (status, again) != (200, 200):
        raise SystemExit(f"{path}: HTTP {status}, then {again}")
    return {"path": path, "first": first, "cached": cached, "bytes": len(body), "body": body}


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _markdown(figures: dict) -> str:
    big = figures["big"]
    lines = [
        f"Big store: {big['families']} families x {len(STAGES)} stages x {big['tasks']} tasks x "
        f"{big['prompts']} prompts x {big['options']} options = {figures['rows']:,} option-count "
        "rows.",
        "",
        "| store | database | import (s) | overview first / cached (s) | task first / cached (s) "
        "| samples (s) | queue (s) | task page (KiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in figures["results"]:
        pages = {p["page"]: p for p in r["pages"]}
        lines.append(
            f"| {r['store']} | {r['database']} | {r['import_seconds']:.1f} "
            f"| {pages['overview']['first']:.2f} / {pages['overview']['cached']:.3f} "
            f"| {pages['task']['first']:.2f} / {pages['task']['cached']:.3f} "
            f"| {pages['samples']['cached']:.3f} | {pages['queue']['cached']:.3f} "
            f"| {pages['task']['bytes'] / 1024:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
