"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from catalog.config import ENV_VAR

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

db_option = click.option(
    "--db",
    "db_url",
    envvar=ENV_VAR,
    default=None,
    metavar="URL",
    help=f"Database URL (default: ${ENV_VAR}, else sqlite:///catalog.db).",
)

# The selection and thresholds shared by `catalog analyze` and `catalog report`.
_ANALYSIS_OPTIONS = (
    click.option("--family", "families", multiple=True, metavar="F",
                 help="Only this family (repeatable)."),
    click.option("--task", "tasks", multiple=True, metavar="T",
                 help="Only this task (repeatable)."),
    click.option("--mode", type=click.Choice(["sampled", "exact"]), default="sampled",
                 show_default=True, help="Sampled counts or exact probabilities (never mixed)."),
    click.option("--tau", type=float, default=0.9, show_default=True, help="Seed-support mass."),
    click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Bootstrap replicates for 95% intervals and seed stability (0: off)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap random seed."),
    click.option("--liquid-threshold", type=float, default=0.1, show_default=True,
                 help="Liquid at base when L[base] >= this."),
    click.option("--nr-threshold", type=float, default=1.0, show_default=True,
                 help="Nucleated needs NR < this."),
    click.option("--probmass-threshold", type=float, default=0.8, show_default=True,
                 help="Nucleated needs ProbMass[sft] >= this."),
    click.option("--settle-tolerance", type=float, default=0.1, show_default=True,
                 help="Settled when ProbMass[s] >= ProbMass[sft] - this."),
    click.option("--min-samples", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Exclude (and report) prompts with fewer valid samples."),
)


def analysis_options(command):
    """Add the analysis selection and threshold options; the command receives them as
    keyword arguments and passes them to :func:`analysis_request`."""
    for option in reversed(_ANALYSIS_OPTIONS):
        command = option(command)
    return command


def analysis_request(families, tasks, mode, **thresholds) -> dict:
    """Keyword arguments for ``analysis.crystallization.analyze`` from the CLI options."""
    from analysis.crystallization import AnalysisOptions

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
    return {"families": families or None, "tasks": tasks or None, "mode": mode,
            "options": options}


@contextlib.contextmanager
def catalog_engine(db_url: str | None) -> Iterator[Engine]:
    """The catalog's engine for a command (schema gate included), disposed afterwards."""
    from catalog.db import open_catalog

    engine = open_catalog(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def catalog_session(db_url: str | None) -> Iterator[Session]:
    """One transaction on the catalog for a command: committed on success, else rolled back."""
    from catalog.db import session_scope

    with catalog_engine(db_url) as engine, session_scope(engine) as session:
        yield session
