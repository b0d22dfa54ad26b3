"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from analysis.options import AnalysisOptions, ConditionSelection
from catalog.cli import types
from catalog.config import ENV_VAR
from catalog.db import open_catalog, session_scope
from catalog.enums import RUN_MODES

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

DB_HELP = f"Database URL (default: ${ENV_VAR}, else sqlite:///catalog.db)."


def _db_from_group(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``catalog --db URL CMD`` and ``catalog CMD --db URL`` both work; the one after the
    command wins. The environment variable and the default are resolved later, by
    :func:`catalog.config.database_url`, so an explicit ``--db`` anywhere beats them."""
    if value is None:
        return ctx.find_root().params.get("db_url")
    return value


db_option = click.option(
    "--db", "db_url", default=None, metavar="URL", help=DB_HELP, callback=_db_from_group
)


def dataclass_defaults(cls) -> dict[str, Any]:
    """The default of each field of a dataclass that has one: the CLI's option defaults are
    read from the dataclasses the options fill, so the library and the CLI never disagree."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


# The selection and thresholds shared by `catalog analyze` and `catalog report`.
_ANALYSIS = dataclass_defaults(AnalysisOptions)
_ANALYSIS_OPTIONS = (
    click.option("--family", "families", multiple=True, metavar="F",
                 help="Only this family (repeatable)."),
    click.option("--task", "tasks", multiple=True, metavar="T",
                 help="Only this task (repeatable)."),
    click.option("--mode", type=click.Choice(RUN_MODES), default="sampled",
                 show_default=True, help="Sampled counts or exact probabilities (never mixed)."),
    click.option("--tau", type=types.FiniteFloat(above=0, at_most=1), default=_ANALYSIS["tau"],
                 show_default=True,
                 help="Seed-support mass."),
    click.option("--bootstrap", type=click.IntRange(min=0, max=1_000_000),
                 default=_ANALYSIS["bootstrap"],
                 show_default=True,
                 help="Bootstrap replicates for 95% intervals and seed stability (0: off)."),
    click.option("--seed", type=types.SEED, default=_ANALYSIS["seed"], show_default=True,
                 help="Bootstrap random seed."),
    click.option("--liquid-threshold", "liquid_threshold", type=types.FiniteFloat(),
                 default=_ANALYSIS["liquid_threshold"], show_default=True,
                 help="Liquid at base when L[base] >= this."),
    click.option("--nr-threshold", "nucleation_ratio_threshold", type=types.FiniteFloat(),
                 default=_ANALYSIS["nucleation_ratio_threshold"], show_default=True,
                 help="Nucleated needs NR < this."),
    click.option("--probmass-threshold", "probmass_threshold", type=types.FiniteFloat(),
                 default=_ANALYSIS["probmass_threshold"], show_default=True,
                 help="Nucleated needs ProbMass[sft] >= this."),
    click.option("--settle-tolerance", "settle_tolerance", type=types.FiniteFloat(),
                 default=_ANALYSIS["settle_tolerance"], show_default=True,
                 help="Settled when ProbMass[s] >= ProbMass[sft] - this."),
    click.option("--verdict-support", "verdict_support", type=float,
                 default=_ANALYSIS["verdict_support"], show_default=True,
                 help="With --bootstrap: a verdict holding in fewer replicates than this "
                      "share reads 'uncertain'."),
    click.option("--min-samples", "min_samples", type=click.IntRange(min=1),
                 default=_ANALYSIS["min_samples"], show_default=True,
                 help="Exclude (and report) prompts with fewer valid samples."),
    click.option("--temperature", "temperature", type=types.TEMPERATURE, multiple=True,
                 metavar="T",
                 help="Only runs sampled at this temperature (repeatable)."),
    click.option("--top-p", "top_p", type=types.TOP_P, multiple=True, metavar="P",
                 help="Only runs with this top-p (repeatable)."),
    click.option("--top-k", "top_k", type=types.TOP_K, multiple=True, metavar="K",
                 help="Only runs with this top-k (repeatable; 0: runs without top-k)."),
    click.option("--max-new-tokens", "max_new_tokens", type=types.MAX_NEW_TOKENS,
                 multiple=True, metavar="N", help="Only runs with this token limit (repeatable)."),
    click.option("--reference-temperature", "reference_temperature", type=types.TEMPERATURE,
                 default=_ANALYSIS["reference_temperature"], show_default=True,
                 help="Temperature sweeps: ProbMass on the seed support chosen at this "
                      "temperature."),
    click.option("--trajectories/--no-trajectories", "trajectories", default=None,
                 help="Checkpoint trajectories and change points (default: on when a stage "
                      "has several checkpoints)."),
)


def analysis_options(command):
    """Add the analysis selection and threshold options; the command receives them as
    keyword arguments and passes them to :func:`analysis_request`."""
    for option in reversed(_ANALYSIS_OPTIONS):
        command = option(command)
    return command


def analysis_request(
    families, tasks, mode, temperature, top_p, top_k, max_new_tokens, **thresholds
) -> dict:
    """Keyword arguments for ``analysis.crystallization.analyze`` from the CLI options (the
    threshold options are named after the :class:`AnalysisOptions` fields they fill)."""
    conditions = ConditionSelection(temperature, top_p, top_k, max_new_tokens)
    return {"families": families or None, "tasks": tasks or None, "mode": mode,
            "conditions": conditions, "options": AnalysisOptions(**thresholds)}


@contextlib.contextmanager
def catalog_engine(db_url: str | None, *, read_only: bool = False) -> Iterator[Engine]:
    """The catalog's engine for a command (schema gate included), disposed afterwards.
    ``read_only``: for commands that only read, which never create a database."""
    engine = open_catalog(db_url, create=not read_only)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def catalog_session(db_url: str | None, *, read_only: bool = False) -> Iterator[Session]:
    """One transaction on the catalog for a command: committed on success, else rolled back."""
    with catalog_engine(db_url, read_only=read_only) as engine, session_scope(engine) as session:
        yield session
