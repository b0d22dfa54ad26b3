"""Benchmark: `catalog report` drawing time at study scale, in memory (no database).

A study-sized selection: 2 families x 4 stages x 15 tasks x 20 prompts x 10 options
(planted synthetic counts, catalog/toylab/synthetic.py), analyzed with --bootstrap B, then drawn
by ``analysis.report.write_report`` (every figure rendered, PNGs and report.html written).
Prints wall and CPU seconds of the analysis and of the drawing, the number of figures and
the size of report.html. Target: the drawing finishes in under a minute on a 2-core machine
(about 1 s per task); the HTML stays under 5 MB.

    python benchmarks/report_build.py                  # 15 tasks, 2 families
    python benchmarks/report_build.py --tasks 3 --bootstrap 0
    python benchmarks/report_build.py --smoke   # 1 family x 2 tasks x 4 prompts: seconds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--options", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--output", type=Path, default=None, help="Keep the report here.")
    parser.add_argument("--smoke", action="store_true",
                        help="1 family x 2 tasks x 4 prompts x 4 options, bootstrap 5")
    args = parser.parse_args()
    if args.smoke:
        args.families, args.tasks, args.prompts, args.options, args.bootstrap = 1, 2, 4, 4, 5

    started = time.perf_counter(), time.process_time()
    from analysis.crystallization import AnalysisOptions, analyze_data
    from analysis.frames import counts_from_frame
    from analysis.report import write_report
    from catalog.toylab.synthetic import planted_counts

    frame, _ = planted_counts(
        families=[f"family_{i}" for i in range(args.families)],
        tasks=[f"task_{i:02d}" for i in range(args.tasks)],
        n_prompts=args.prompts, n_options=args.options, n_samples=1000,
    )
    result = analyze_data(counts_from_frame(frame), AnalysisOptions(bootstrap=args.bootstrap))
    analyzed = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        summary = write_report(result, args.output or Path(scratch))
        drawn = time.perf_counter(), time.process_time()
        size = summary.path.stat().st_size
    print(
        f"{args.families} families x {args.tasks} tasks x {args.prompts} prompts, "
        f"bootstrap {args.bootstrap}: analyze {analyzed[0] - started[0]:.1f}s wall "
        f"({analyzed[1] - started[1]:.1f}s CPU); draw {drawn[0] - analyzed[0]:.1f}s wall "
        f"({drawn[1] - analyzed[1]:.1f}s CPU), {len(summary.figures)} figures, "
        f"report.html {size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
