"""Benchmark: `catalog analyze` at scale, against just reading the counts, on both databases.

1. Scale: 10 families x 4 stages x 15 tasks x 200 prompts x 50 options = 6,000,000
   option-count rows (planted synthetic counts, catalog/toylab/synthetic.py), stored through the
   import path (catalog.imports.import_counts of a Parquet file) on SQLite and on PostgreSQL.
   Measured, each in a fresh subprocess (peak memory from resource.getrusage maxrss, of the
   process and of its children: connectorx reads file SQLite in a child process):
   - read: the analysis' own count query through the same reader (catalog.views.read_sql):
     ``SELECT run_id, option, count FROM v_counts WHERE mode = 'sampled'``;
   - analyze: ``analysis.crystallization.analyze`` without bootstrap plus the JSON
     rendering (everything ``catalog analyze --format json`` does after start-up).
   Targets: analyze <= 3 x read; peak memory < 2 GiB.
2. Study scale: 2 families x 4 stages x 15 tasks x 20 prompts (10 options, 1000 samples):
   analyze with 1000 bootstrap replicates against the same analysis without. Target: <= 50 x.

Scratch PostgreSQL databases are created on the server of --postgres and dropped at the end.

    python benchmarks/analysis_scale.py                       # everything (~15 min here)
    python benchmarks/analysis_scale.py --families 1 --backends sqlite   # a quick look
    python benchmarks/analysis_scale.py --smoke --backends sqlite       # seconds: does it run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

READ_SQL = "SELECT run_id, option, count FROM v_counts WHERE mode = 'sampled'"
STAGES = ("base", "sft", "dpo", "rl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--options", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="Admin URL of the server that gets the scratch databases.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument("--smoke", action="store_true",
                        help="1 family x 2 tasks x 4 prompts x 4 options, both parts, bootstrap 5")
    args = parser.parse_args()
    if args.smoke:
        args.families, args.tasks, args.prompts, args.options = 1, 2, 4, 4
        args.samples, args.bootstrap = 50, 5

    backends = args.backends.split(",")
    figures: dict = {"scale": {}, "study": {}}
    with tempfile.TemporaryDirectory(prefix="analysis-scale-") as tmp:
        workdir = Path(tmp)
        scale = {"families": args.families, "tasks": args.tasks, "prompts": args.prompts,
                 "options": args.options, "samples": args.samples}
        study = {"families": 2, "tasks": args.tasks, "prompts": 20, "options": 10,
                 "samples": 1000}
        if args.smoke:
            study.update(prompts=args.prompts, options=args.options, samples=args.samples)
        # Generating and importing run in child processes too, so this process stays small:
        # Linux carries a process's peak RSS over fork+exec into ru_maxrss of its children.
        scale_file = _in_child("generate", str(workdir / "scale.parquet"), json.dumps(scale))
        study_file = _in_child("generate", str(workdir / "study.parquet"), json.dumps(study))
        figures["rows"] = _rows(**scale)
        figures["study_tasks"], figures["study_shape"] = args.tasks, study
        for backend in backends:
            with scratch_database(backend, args.postgres, workdir) as url:
                figures["scale"][backend] = _scale_figures(url, scale_file, args.families * args.tasks)
            with scratch_database(backend, args.postgres, workdir) as url:
                figures["study"][backend] = _study_figures(url, study_file, args.bootstrap)
    print(_markdown(figures, args.bootstrap))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


# ----- data ------------------------------------------------------------------------------


def _rows(families, tasks, prompts, options, samples) -> int:
    return families * len(STAGES) * tasks * prompts * options


def _counts_file(path: Path, families, tasks, prompts, options, samples) -> dict:
    from catalog.toylab.synthetic import planted_counts

    start = time.perf_counter()
    frame, seeds = planted_counts(
        families=[f"family{f:02d}" for f in range(families)], stages=STAGES,
        tasks=[f"bench_task{t:02d}" for t in range(tasks)], n_prompts=prompts,
        n_options=options, n_samples=samples, random_seed=2024,
    )
    # Prompt ids come from the file order on import; the planted seeds are kept beside it.
    frame.drop("prompt_id").write_parquet(path)
    path.with_suffix(".seeds.json").write_text(
        json.dumps({f"{f}|{t}": p for (f, t), p in seeds.items()})
    )
    print(f"generated {frame.height:,} rows in {time.perf_counter() - start:.1f} s -> {path.name}",
          file=sys.stderr)
    return {"path": str(path)}


class scratch_database:
    """A fresh SQLite file or PostgreSQL database for one measurement, dropped afterwards."""

    def __init__(self, backend: str, admin_url: str, workdir: Path) -> None:
        self.backend, self.admin_url, self.workdir = backend, admin_url, workdir
        self.name = f"catalog_bench_{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.workdir / (self.name + '.db')}"
        self._admin(f"CREATE DATABASE {self.name}")
        from sqlalchemy.engine import make_url

        return make_url(self.admin_url).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc) -> None:
        if self.backend == "sqlite":
            for path in self.workdir.glob(self.name + ".db*"):
                path.unlink()
        else:
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        from catalog.config import database_url

        engine = create_engine(database_url(self.admin_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(statement))
        engine.dispose()


def _import(url: str, path: str) -> dict:
    from catalog.db import open_catalog
    from catalog.imports import import_counts

    engine = open_catalog(url)
    start = time.perf_counter()
    import_counts(engine, path)
    seconds = time.perf_counter() - start
    engine.dispose()
    return {"seconds": seconds}


# ----- measurements (each in its own process) ----------------------------------------------


def _in_child(kind: str, *args: str):
    """Run one step in a fresh Python process; its JSON result (or file path) comes back."""
    output = subprocess.run(
        [sys.executable, __file__, "_child", kind, *args], check=True, stdout=subprocess.PIPE,
        text=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    return Path(result["path"]) if kind == "generate" else result


def _measure(kind: str, url: str, bootstrap: int = 0) -> dict:
    """Time ``kind`` (read or analyze) in a fresh process, with its peak memory."""
    return _in_child(kind, url, str(bootstrap))


def _child(kind: str, *args: str) -> dict:
    if kind == "generate":
        return _counts_file(Path(args[0]), **json.loads(args[1]))
    if kind == "import":
        return _import(args[0], args[1])
    url, bootstrap = args[0], int(args[1])
    from catalog.db import open_catalog

    engine = open_catalog(url)
    extra: dict = {}
    if kind == "read":
        from catalog.views import read_sql

        start = time.perf_counter()
        frame = read_sql(engine, READ_SQL)
        seconds = time.perf_counter() - start
        extra["rows"] = frame.height
    else:
        from analysis.crystallization import AnalysisOptions, analyze
        from analysis.render import render

        start = time.perf_counter()
        result = analyze(engine, options=AnalysisOptions(bootstrap=bootstrap, seed=1))
        text = render(result, "json")
        seconds = time.perf_counter() - start
        document = json.loads(text)
        extra["groups"] = len(document["tasks"])
        extra["tasks"] = [(t["family"], t["task"], t["seed_prompt_id"], t["verdict"])
                          for t in document["tasks"]]
    engine.dispose()
    return {
        "seconds": seconds,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "vmhwm_mib": _vmhwm_mib(),
        **extra,
    }


def _vmhwm_mib() -> float | None:
    """Peak RSS of this process image as the kernel's VmHWM (a cross-check of ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _scale_figures(url: str, path: Path, groups: int) -> dict:
    print(f"scale: importing into {url.split(':')[0]} ...", file=sys.stderr)
    figures = {"import_seconds": _in_child("import", url, str(path))["seconds"]}
    figures["read"] = _measure("read", url)
    analyzed = _measure("analyze", url)
    planted = json.loads(path.with_suffix(".seeds.json").read_text())
    analyzed["planted_seeds_found"] = sum(
        planted[f"{family}|{task}"] == seed for family, task, seed, _ in analyzed["tasks"]
    )
    analyzed["verdicts_all_as_planted"] = all(
        v == {"liquid": True, "nucleated": True, "settled": {"dpo": True, "rl": True}}
        for *_, v in analyzed.pop("tasks")
    )
    figures["analyze"] = analyzed
    figures["ratio"] = analyzed["seconds"] / figures["read"]["seconds"]
    assert analyzed["groups"] == groups
    print(f"scale: {json.dumps(figures)}", file=sys.stderr)
    return figures


def _study_figures(url: str, path: Path, bootstrap: int) -> dict:
    figures = {"import_seconds": _in_child("import", url, str(path))["seconds"]}
    figures["analyze"] = _measure("analyze", url)
    figures["analyze_bootstrap"] = _measure("analyze", url, bootstrap)
    for key in ("analyze", "analyze_bootstrap"):
        figures[key].pop("tasks")
    figures["ratio"] = figures["analyze_bootstrap"]["seconds"] / figures["analyze"]["seconds"]
    print(f"study: {json.dumps(figures)}", file=sys.stderr)
    return figures


def _markdown(figures: dict, bootstrap: int) -> str:
    lines = [
        f"Scale: {figures['rows']:,} option-count rows (read = `{READ_SQL}`).",
        "",
        "| database | import (s) | read (s) | analyze (s) | analyze / read | peak MiB (analyze; its children) | planted seeds found |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, f in figures["scale"].items():
        a = f["analyze"]
        lines.append(
            f"| {backend} | {f['import_seconds']:.1f} | {f['read']['seconds']:.1f} | "
            f"{a['seconds']:.1f} | {f['ratio']:.2f} | {a['maxrss_mib']:.0f}; "
            f"{a['children_maxrss_mib']:.0f} | {a['planted_seeds_found']}/{a['groups']}"
            + ("" if a["verdicts_all_as_planted"] else " (verdicts differ)") + " |"
        )
    study = figures["study_shape"]
    lines += [
        "",
        (
            f"Study scale ({study['families']} families x 4 stages x {study['tasks']} tasks x "
            f"{study['prompts']} prompts, {study['options']} options, {study['samples']} samples "
            f"per prompt): {bootstrap} bootstrap replicates."
        ),
        "",
        "| database | analyze (s) | with bootstrap (s) | ratio | peak MiB with bootstrap |",
        "|---|---|---|---|---|",
    ]
    for backend, f in figures["study"].items():
        lines.append(
            f"| {backend} | {f['analyze']['seconds']:.2f} | "
            f"{f['analyze_bootstrap']['seconds']:.2f} | {f['ratio']:.1f} | "
            f"{f['analyze_bootstrap']['maxrss_mib']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(_child(sys.argv[2], *sys.argv[3:])))
    else:
        main()
