"""``catalog plan``: register a grid's missing units as pending work for ``catalog worker``."""

from __future__ import annotations

import click
from click.core import ParameterSource

from catalog.cli.common import catalog_engine, db_option
from catalog.cli.ingest import ingest_requests, request_options
from catalog.config import masked


@click.command("plan")
@request_options
@click.option("--experiment", metavar="FILE|NAME",
              help="An experiment file: register its families and read what to sample from "
              "its [plan] table (options given here override it).")
@db_option
@click.pass_context
def plan_command(ctx: click.Context, experiment, db_url, **selection) -> None:
    """Enqueue the units of a grid that are not planned yet, for any worker to run.

    Prompts are rendered with each model's tokenizer alone (no weights are loaded), so
    every unit's key covers the exact text its model will see. Planning the same grid
    again adds nothing; failed units get new attempts.

    Example: catalog plan --family olmo-2-1124-7b --task digit,coin --samples 1000 --seed 1
    """
    from ingest.planning import PlanSummary, experiment_plan, plan

    given = {name: value for name, value in selection.items()
             if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    with catalog_engine(db_url) as engine:
        if experiment:
            selection = {**selection, **experiment_plan(engine, experiment), **given}
        summary = PlanSummary()
        for request in ingest_requests(**selection):  # a sweep: one set of units per value
            summary.models += plan(engine, request).models
        url = masked(engine.url)
    click.echo(summary.line())
    if summary.total("new") + summary.total("already_planned") + summary.total("requeued"):
        click.echo(f"run them: catalog worker --db {url}  (progress: catalog status --db {url})")


COMMANDS = [plan_command]
