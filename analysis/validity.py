"""How much of each model's samples the analysis could read, and why the rest could not.

Every invalid sample carries a reason (docs/normalization.md): ``no_answer``, ``ambiguous``,
``off_category``, ``out_of_range``. :func:`validity_table` adds them up per (family, task,
condition, model) from ``v_runs``; :func:`validity_warnings` names the models whose valid
rate is low (their distributions rest on few answers) and the selections whose runs were
normalized by different normalizer versions (`catalog renormalize` brings them to one), as
problems of the analysis (and warnings).

Example::

    table = validity_table(engine, families=["toy"], tasks=["digit"])
    for problem in validity_problems(table):
        print(problem.message)
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from sqlalchemy import Engine

from analysis.frames import select_sql
from analysis.groups import Problem
from catalog.enums import INVALID_REASONS
from catalog.views import read_sql

# Below this share of valid samples a model's distributions are flagged.
LOW_VALID_RATE = 0.5
REASON_COLUMNS = [f"n_{reason}" for reason in INVALID_REASONS]
KEYS = ["family", "task", "condition_key", "stage", "stage_order", "step", "model"]


def validity_table(
    engine: Engine,
    *,
    families: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    condition_keys: Sequence[str] | None = None,
) -> pl.DataFrame:
    """One row per (family, task, condition, model) of the done sampled runs: samples,
    valid rate, the rate of each invalid reason (null where some runs' reasons are unknown:
    imported counts, runs normalized before reasons) and the normalizer versions used."""
    sql = select_sql(
        engine, "v_runs",
        [*KEYS, "n_valid", "n_invalid", *REASON_COLUMNS, "normalizer_version"],
        {"mode": ["sampled"], "family": families, "task": tasks},
    )
    runs = read_sql(engine, sql)
    if condition_keys is not None:
        runs = runs.filter(pl.col("condition_key").is_in(list(condition_keys)))
    if not runs.height:
        return pl.DataFrame(schema={**dict.fromkeys(KEYS, pl.String), "n_samples": pl.Int64})
    runs = runs.with_columns(pl.col("n_valid", "n_invalid", *REASON_COLUMNS).cast(pl.Int64))
    samples = pl.col("n_valid") + pl.col("n_invalid")
    table = runs.group_by(KEYS, maintain_order=True).agg(
        pl.col("n_valid").sum(),
        samples.sum().alias("n_samples"),
        *(pl.when(pl.col(c).is_null().any()).then(None).otherwise(pl.col(c).sum()).alias(c)
          for c in REASON_COLUMNS),
        pl.col("normalizer_version").drop_nulls().unique().sort().alias("normalizer_versions"),
    )
    rate = lambda c: (pl.col(c) / pl.col("n_samples")).alias(c.replace("n_", "", 1) + "_rate")  # noqa: E731
    return table.with_columns(
        (pl.col("n_valid") / pl.col("n_samples")).alias("valid_rate"),
        *(rate(c) for c in REASON_COLUMNS),
    ).sort("family", "task", "condition_key", "stage_order", "step", nulls_last=True)


def validity_problems(table: pl.DataFrame, low: float = LOW_VALID_RATE) -> list[Problem]:
    """Problems (``low_validity``, ``mixed_normalizer_versions``) for models whose valid rate
    is below ``low`` and for (family, task) selections whose runs were normalized by
    different normalizer versions."""
    if "valid_rate" not in table.columns:
        return []
    problems = []
    for row in table.filter(pl.col("valid_rate") < low).iter_rows(named=True):
        reasons = ", ".join(
            f"{reason.replace('_', ' ')} {row[f'{reason}_rate']:.0%}"
            for reason in INVALID_REASONS if row[f"{reason}_rate"]
        )
        problems.append(Problem(
            "low_validity",
            f"{row['family']}/{row['task']}: {row['model']} ({row['stage']}) gave a valid answer "
            f"in {row['valid_rate']:.0%} of {row['n_samples']:,} samples"
            + (f" ({reasons})" if reasons else "")
            + "; its distributions rest on few answers (docs/normalization.md)",
            family=row["family"], task=row["task"], condition_key=row["condition_key"],
            stage=row["stage"], step=row["step"], metric="validity",
        ))
    mixed = table.group_by("family", "task", maintain_order=True).agg(
        pl.col("normalizer_versions").list.explode(keep_nulls=False, empty_as_null=False).unique().sort()
    ).filter(pl.col("normalizer_versions").list.len() > 1)
    for row in mixed.iter_rows(named=True):
        versions = ", ".join(row["normalizer_versions"])
        problems.append(Problem(
            "mixed_normalizer_versions",
            f"{row['family']}/{row['task']}: runs were normalized by different normalizer "
            f"versions ({versions}); bring them to one with `catalog renormalize --task "
            f"{row['task']}`",
            family=row["family"], task=row["task"],
        ))
    return problems


def validity_records(table: pl.DataFrame) -> list[dict]:
    """The table as JSON-able rows (the ``validity`` list of ``catalog analyze``'s JSON)."""
    if "valid_rate" not in table.columns:
        return []
    columns = [*KEYS, "n_samples", "valid_rate", *(f"{r}_rate" for r in INVALID_REASONS),
               "normalizer_versions"]
    return table.select(columns).to_dicts()
