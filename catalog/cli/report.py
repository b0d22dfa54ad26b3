"""``catalog report``: the study's figures as a self-contained HTML file and PNGs (analysis/report.py)."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.cli.common import analysis_options, analysis_request, catalog_engine, db_option


@click.command("report")
@db_option
@analysis_options
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("catalog-report"), show_default=True,
              help="Directory for report.html and figures/*.png.")
def report_command(db_url, output, **selection) -> None:
    """Write the study's figures: one self-contained HTML file plus each figure as PNG.

    The report opens offline (images embedded, no scripts): per task (and sampling
    condition) the base prompts' answer distributions, the distributions by stage with the
    seed, the metric trajectories, the cross-family seed prediction and, for stores with
    checkpoints, the order parameters across checkpoints with their change points;
    temperature sweeps; a verdict table with the thresholds used.

    Example: catalog report --task digit --bootstrap 200 --output catalog-report
    """
    from analysis.report import build_report

    request = analysis_request(**selection)
    with catalog_engine(db_url, read_only=True) as engine:
        summary = build_report(engine, output, **request)
    for warning in summary.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(summary.path)
    click.echo(f"{len(summary.figures)} figures ({len(summary.tasks)} tasks, "
               f"{len(summary.families)} families) in {summary.path.parent / 'figures'}")


COMMANDS = [report_command]
