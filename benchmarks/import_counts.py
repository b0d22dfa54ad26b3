"""Benchmark: import, re-import and read back a study-sized counts file.

10 families x 4 stages x 15 tasks x 200 prompts x 50 options = 6,000,000 rows (open tasks,
so no closed-option lists get in the way). Usage:

    python benchmarks/import_counts.py --db sqlite:////tmp/bench.db
    python benchmarks/import_counts.py --db postgresql://postgres@127.0.0.1/catalog_bench
    python benchmarks/import_counts.py --families 1   # 600,000 rows, a quick look
    python benchmarks/import_counts.py --smoke        # 96 rows into a scratch SQLite file

The database should be empty (or hold a previous run of this benchmark).

Baseline (2026-11-25, this 2-core machine shared with other jobs, load average 5-8, so
roughly 2-3x slower than an idle machine; 6,000,000 rows; peak RSS 3.1 GB):

                                    SQLite    PostgreSQL 15
    import                          129 s     119 s
    re-import (replaces every run)  180 s     185 s
    read_view v_distributions       394 s     139 s   (the view's own SQL dominates)
    read_sql run_id/option/count     28 s      22 s   (from v_counts)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from catalog.db import open_catalog
from catalog.imports import import_counts
from catalog.views import read_sql, read_view

STAGES = ("base", "sft", "dpo", "rlvr")


def counts_file(path: Path, families: int, tasks: int, prompts: int, options: int) -> Path:
    grid = (
        pl.DataFrame({"family": [f"family{f:02d}" for f in range(families)]})
        .join(pl.DataFrame({"stage": STAGES}), how="cross")
        .join(pl.DataFrame({"task": [f"task{t:02d}" for t in range(tasks)]}), how="cross")
        .join(pl.DataFrame({"prompt": [f"p{p:03d}" for p in range(prompts)]}), how="cross")
        .join(pl.DataFrame({"option": [f"option{o:02d}" for o in range(options)]}), how="cross")
    )
    frame = grid.with_columns(
        model=pl.col("family") + "-" + pl.col("stage"),
        count=(pl.int_range(pl.len()) * 7919 % 1000).cast(pl.Int64),
        prompt_text="Name a random thing, please (" + pl.col("prompt") + ").",
    )
    frame.write_parquet(path)
    return path


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.1f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="required, except with --smoke (a scratch SQLite file)")
    parser.add_argument("--families", type=int, default=10)
    parser.add_argument("--smoke", action="store_true",
                        help="1 family x 2 tasks x 3 prompts x 4 options: checks the script runs")
    args = parser.parse_args()
    if args.db is None and not args.smoke:
        parser.error("the following arguments are required: --db")
    sizes = (1, 2, 3, 4) if args.smoke else (args.families, 15, 200, 50)
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_catalog(args.db or f"sqlite:///{Path(tmp) / 'smoke.db'}")
        path = counts_file(Path(tmp) / "counts.parquet", *sizes)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        print(f"{engine.dialect.name}: {rows:,} rows")
        print(timed("import", lambda: import_counts(engine, path)))
        print(timed("re-import (replaces every run)", lambda: import_counts(engine, path)))
        frame = timed("read_view v_distributions", lambda: read_view(engine, "v_distributions"))
        print(f"  {frame.height:,} rows, {frame.estimated_size() / 1e6:.0f} MB")
        frame = timed(
            "read_sql run_id, option, count from v_counts",
            lambda: read_sql(engine, "SELECT run_id, option, count FROM v_counts"),
        )
        print(f"  {frame.height:,} rows, {frame.estimated_size() / 1e6:.0f} MB")
        engine.dispose()


if __name__ == "__main__":
    main()
