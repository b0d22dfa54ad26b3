"""``catalog report``: the study's figures as a self-contained HTML file and PNGs (analysis/report.py)."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.cli.common import db_option


@click.command("report")
@db_option
@click.option("--family", "families", multiple=True, metavar="F", help="Only this family (repeatable).")
@click.option("--task", "tasks", multiple=True, metavar="T", help="Only this task (repeatable).")
@click.option("--mode", type=click.Choice(["sampled", "exact"]), default="sampled", show_default=True,
              help="Sampled counts or exact probabilities (never mixed).")
@click.option("--tau", type=float, default=0.9, show_default=True, help="Seed-support mass.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap replicates for 95% intervals (error bars) and seed stability (0: off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap random seed.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("catalog-report"), show_default=True,
              help="Directory for report.html and figures/*.png.")
def report_command(db_url, families, tasks, mode, tau, bootstrap, seed, output) -> None:
    """Write the study's figures: one self-contained HTML file plus each figure as PNG.

    The report opens offline (images embedded, no scripts): per task the base prompts'
    answer distributions, the distributions by stage with the seed, the metric trajectories
    and the cross-family seed prediction; a verdict table with the thresholds used.

    Example: catalog report --task digit --bootstrap 200 --output catalog-report
    """
    from analysis.crystallization import AnalysisOptions
    from analysis.report import build_report
    from catalog.db import open_catalog

    options = AnalysisOptions(tau=tau, bootstrap=bootstrap, seed=seed)
    engine = open_catalog(db_url)
    try:
        summary = build_report(
            engine, output, families=families or None, tasks=tasks or None, mode=mode, options=options
        )
    finally:
        engine.dispose()
    click.echo(summary.path)
    click.echo(f"{len(summary.figures)} figures ({len(summary.tasks)} tasks, "
               f"{len(summary.families)} families) in {summary.path.parent / 'figures'}")


COMMANDS = [report_command]
