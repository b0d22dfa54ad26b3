"""``catalog analyze``: crystallization metrics over the store (a thin layer over analysis/)."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.cli.common import db_option


@click.command("analyze")
@db_option
@click.option("--family", "families", multiple=True, metavar="F",
              help="Only this family (repeatable).")
@click.option("--task", "tasks", multiple=True, metavar="T", help="Only this task (repeatable).")
@click.option("--mode", type=click.Choice(["sampled", "exact"]), default="sampled",
              show_default=True, help="Sampled counts or exact probabilities (never mixed).")
@click.option("--tau", type=float, default=0.9, show_default=True, help="Seed-support mass.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap replicates for 95% intervals and seed stability (0: off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap random seed.")
@click.option("--liquid-threshold", type=float, default=0.1, show_default=True,
              help="Liquid at base when L[base] >= this.")
@click.option("--nr-threshold", type=float, default=1.0, show_default=True,
              help="Nucleated needs NR < this.")
@click.option("--probmass-threshold", type=float, default=0.8, show_default=True,
              help="Nucleated needs ProbMass[sft] >= this.")
@click.option("--settle-tolerance", type=float, default=0.1, show_default=True,
              help="Settled when ProbMass[s] >= ProbMass[sft] - this.")
@click.option("--min-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Exclude (and report) prompts with fewer valid samples.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
def analyze_command(db_url, families, tasks, mode, fmt, output, **thresholds) -> None:
    """Measure crystallization: liquidity, seed, nucleation ratio, ProbMass, verdicts.

    Definitions: shared/design/metrics.md (README "Analysis"). The thresholds are printed
    with the result.

    Example: catalog analyze --family olmo-2-7b --task digit --bootstrap 1000 --format json
    """
    from analysis.crystallization import AnalysisOptions, analyze
    from analysis.render import render
    from catalog.db import open_catalog

    options = AnalysisOptions(
        tau=thresholds["tau"],
        liquid_threshold=thresholds["liquid_threshold"],
        nucleation_ratio_threshold=thresholds["nr_threshold"],
        probmass_threshold=thresholds["probmass_threshold"],
        settle_tolerance=thresholds["settle_tolerance"],
        min_samples=thresholds["min_samples"],
        bootstrap=thresholds["bootstrap"],
        seed=thresholds["seed"],
    )
    engine = open_catalog(db_url)
    try:
        result = analyze(
            engine, families=families or None, tasks=tasks or None, mode=mode, options=options
        )
    finally:
        engine.dispose()
    text = render(result, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        groups = len(result.groups)
        click.echo(f"wrote {fmt} analysis of {groups} (family, task) groups to {output}")


COMMANDS = [analyze_command]
