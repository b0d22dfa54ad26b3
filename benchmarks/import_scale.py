"""Benchmark: both imports at scale, peak memory and throughput against a bare COPY.

For each size N and database it writes a counts CSV of N rows (50 options per run, 4
stages, open tasks) and a completions JSONL of N lines (one generation per line, 1000
lines per run, the bundled digit task, texts drawn from 24 realistic answers), then runs,
each in its own Python process (peak memory: that process's VmHWM from /proc/self/status,
so the interpreter and libraries, about 150 MiB, are included; not ru_maxrss, which Linux
carries over from the forking parent):

- ``import-counts`` of the CSV into a fresh catalog, and again (replacing every run);
- ``import-completions`` of the JSONL into a fresh catalog;
- the floor: a bare COPY (PostgreSQL) or executemany (SQLite) of the same N rows, already
  in memory as (run_id, option, count) / (run_id, text, count), into a table with the same
  primary key and no foreign key, timed alone.

Usage:

    python benchmarks/import_scale.py                          # 1M rows, both databases
    python benchmarks/import_scale.py --rows 1000000,10000000 --lines 1000000,5000000
    python benchmarks/import_scale.py --rows 200000 --backends sqlite   # a quick look
    python benchmarks/import_scale.py --smoke --backends sqlite   # 2,000 rows: does it run

PostgreSQL: scratch databases are created on --postgres (default the local server) and
dropped at the end. Targets (issue 10): peak memory under 1 GiB for 10M counts rows and 5M
JSONL lines; import throughput at least a third of the bare COPY's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import polars as pl
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

STAGES = ("base", "sft", "dpo", "rlvr")
OPTIONS_PER_RUN = 50
LINES_PER_RUN = 1000
ANSWERS = [" 7", "7", " 3", " 4.", "Sure! 7", "I pick 5.", " 9", "2", " 8", " seven", " 1",
           " 0", "6", " 42", "The answer is 3", " **4**", "", " I", " banana", " 5\n",
           "My digit: 2", " 10", " six", " 1 or 2"]

# Run in a child process: argv = kind, database URL, file; prints one JSON line.
_CHILD = """
import json, re, sys, time
from catalog.db import open_catalog
from catalog.imports import import_completions, import_counts
kind, url, path = sys.argv[1:4]
engine = open_catalog(url)
start = time.perf_counter()
summary = (import_counts if kind == "counts" else import_completions)(engine, path)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rows": summary.rows, "runs": summary.runs,
                  "peak_mib": int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024}))
"""

_BARE_CHILD = """
import io, json, re, sys, time
import polars as pl
from sqlalchemy import create_engine
kind, url, path = sys.argv[1:4]
frame = pl.read_parquet(path)
engine = create_engine(url)
with engine.begin() as conn:
    value = "option VARCHAR(500)" if kind == "counts" else "text TEXT"
    conn.exec_driver_sql(f"CREATE TABLE bare (run_id INTEGER, {value}, count BIGINT"
                         + (", PRIMARY KEY (run_id, option))" if kind == "counts" else ")"))
buffers = []
for chunk in frame.iter_slices(250_000):
    buffer = io.BytesIO()
    chunk.write_csv(buffer, include_header=False)
    buffers.append(buffer.getvalue())
rows = frame.rows() if engine.dialect.name == "sqlite" else None
with engine.begin() as conn:  # timed to the commit, as the import is
    cursor = conn.connection.driver_connection.cursor()
    start = time.perf_counter()
    if engine.dialect.name == "postgresql":
        with cursor.copy(f"COPY bare ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv)") as copy:
            for buffer in buffers:
                copy.write(buffer)
    else:
        cursor.executemany("INSERT INTO bare VALUES (?, ?, ?)", rows)
seconds = time.perf_counter() - start
with engine.begin() as conn:
    conn.exec_driver_sql("DROP TABLE bare")
print(json.dumps({"seconds": seconds, "rows": frame.height,
                  "peak_mib": int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024}))
"""


def counts_file(path: Path, rows: int) -> pl.DataFrame:
    """A counts CSV of ``rows`` rows; returns the bare rows (run_id, option, count)."""
    runs = rows // OPTIONS_PER_RUN
    frame = (
        pl.DataFrame({"run": pl.int_range(0, runs, eager=True)})
        .with_columns(
            family=pl.format("family{}", pl.col("run") // 12_000),
            stage=pl.col("run").mod(4).replace_strict(dict(enumerate(STAGES)),
                                                       return_dtype=pl.String),
            task=pl.format("task{}", (pl.col("run") // 4).mod(15)),
            prompt=pl.format("p{}", (pl.col("run") // 60).mod(200)),
        )
        .with_columns(model=pl.col("family") + "-" + pl.col("stage"))
        .join(pl.DataFrame({"option": [f"option{o:02d}" for o in range(OPTIONS_PER_RUN)]}),
              how="cross")
        .with_columns(count=(pl.int_range(pl.len()) * 7919 % 1000).cast(pl.Int64))
    )
    frame.select("family", "stage", "model", "task", "prompt", "option", "count").write_csv(path)
    return frame.select(pl.col("run").alias("run_id"), "option", "count")


def completions_file(path: Path, lines: int) -> pl.DataFrame:
    """A completions JSONL of ``lines`` lines; returns the bare rows (run_id, text, count)."""
    frame = (
        pl.DataFrame({"line": pl.int_range(0, lines, eager=True)})
        .with_columns(run=pl.col("line") // LINES_PER_RUN)
        .with_columns(
            family=pl.format("family{}", pl.col("run") // 2_400),
            stage=pl.col("run").mod(4).replace_strict(dict(enumerate(STAGES)),
                                                       return_dtype=pl.String),
            task=pl.lit("digit"),
            prompt=pl.format("p{}", (pl.col("run") // 4).mod(600)),
            completion=pl.col("line").hash(7).mod(len(ANSWERS)).replace_strict(
                dict(enumerate(ANSWERS)), return_dtype=pl.String),
        )
        .with_columns(model=pl.col("family") + "-" + pl.col("stage"))
    )
    frame.select("family", "stage", "model", "task", "prompt", "completion").write_ndjson(path)
    return frame.select(pl.col("run").alias("run_id"), pl.col("completion").alias("text"),
                        pl.lit(1, pl.Int64).alias("count"))


def child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class Databases:
    """Fresh databases: SQLite files in a folder, PostgreSQL databases on a server."""

    def __init__(self, folder: Path, postgres: str) -> None:
        self.folder, self.admin_url = folder, make_url(postgres)
        self.created: list[str] = []

    def fresh(self, backend: str) -> str:
        name = f"import_scale_{uuid.uuid4().hex[:8]}"
        if backend == "sqlite":
            return f"sqlite:///{self.folder / (name + '.db')}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000", help="Comma-separated sizes.")
    parser.add_argument("--lines", default=None,
                        help="Comma-separated JSONL sizes (default: --rows).")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--kinds", default="counts,completions")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--smoke", action="store_true", help="2,000 rows and lines")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.lines = "2000", "2000"
    results = []
    with tempfile.TemporaryDirectory(prefix="import-scale-") as tmp:
        folder = Path(tmp)
        databases = Databases(folder, args.postgres)
        try:
            sizes = {"counts": args.rows, "completions": args.lines or args.rows}
            for kind in args.kinds.split(","):
                for rows in (int(r) for r in sizes[kind].split(",")):
                    path = folder / ("counts.csv" if kind == "counts" else "completions.jsonl")
                    bare = (counts_file if kind == "counts" else completions_file)(path, rows)
                    bare_path = folder / "bare.parquet"
                    bare.write_parquet(bare_path)
                    del bare
                    size = path.stat().st_size / 2**20
                    for backend in args.backends.split(","):
                        floor = child(_BARE_CHILD, kind, databases.fresh(backend), str(bare_path))
                        url = databases.fresh(backend)
                        first = child(_CHILD, kind, url, str(path))
                        row = {"kind": kind, "backend": backend, "rows": rows,
                               "file_mib": round(size, 1), "runs": first["runs"],
                               "import_s": round(first["seconds"], 2),
                               "rows_per_s": round(rows / first["seconds"]),
                               "peak_mib": round(first["peak_mib"]),
                               "bare_s": round(floor["seconds"], 2),
                               "bare_rows_per_s": round(rows / floor["seconds"]),
                               "throughput_vs_bare": round(floor["seconds"] / first["seconds"], 3)}
                        if kind == "counts":
                            again = child(_CHILD, kind, url, str(path))
                            row.update(reimport_s=round(again["seconds"], 2),
                                       reimport_peak_mib=round(again["peak_mib"]))
                        print(json.dumps(row), flush=True)
                        results.append(row)
                    path.unlink()
        finally:
            databases.drop_all()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
