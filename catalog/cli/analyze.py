"""``catalog analyze``: crystallization metrics over the store (a thin layer over analysis/)."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.cli.common import analysis_options, analysis_request, catalog_engine, db_option
from catalog.enums import RESULT_FORMATS


@click.command("analyze")
@db_option
@analysis_options
@click.option("--format", "fmt", type=click.Choice(RESULT_FORMATS), default="table",
              show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
def analyze_command(db_url, fmt, output, **selection) -> None:
    """Measure crystallization: liquidity, seed, nucleation ratio, ProbMass, verdicts.

    Per sampling condition (runs of different temperatures, top-p, ... are never pooled),
    with temperature sweeps and checkpoint trajectories where the store holds them.
    Definitions: docs/metrics.md in the catalog's repository. The thresholds are printed
    with the result.

    Example: catalog analyze --family olmo-2-1124-7b --task digit --bootstrap 1000 --format json
    """
    from analysis.crystallization import analyze
    from analysis.render import render

    request = analysis_request(**selection)
    with catalog_engine(db_url, read_only=True) as engine:
        result = analyze(engine, **request)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    text = render(result, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        groups = len(result.groups)
        click.echo(f"wrote {fmt} analysis of {groups} (family, task) groups to {output}")


COMMANDS = [analyze_command]
