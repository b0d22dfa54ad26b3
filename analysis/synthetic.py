"""Synthetic counts with a planted seed, for tests, benchmarks and demonstrations.

Every family's base prompts get their own random distribution (a sparse Dirichlet draw:
liquid). One base prompt per (family, task) is the planted seed; every later stage (SFT,
DPO, RL...) draws every prompt's samples from that seed distribution, so the analysis
should find the planted prompt, call the base liquid, SFT nucleated and the later stages
settled. Generated in whole arrays (no Python loop over rows), so millions of rows are fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

DEFAULT_STAGES = ("base", "sft", "dpo", "rl")


def planted_counts(
    *,
    families: Sequence[str] = ("fam_a", "fam_b"),
    stages: Sequence[str] = DEFAULT_STAGES,
    tasks: Sequence[str] = ("digit",),
    n_prompts: int = 8,
    n_options: int = 10,
    n_samples: int = 400,
    concentration: float = 0.3,
    seed_prompts: dict[tuple[str, str], int] | None = None,
    random_seed: int = 0,
) -> tuple[pl.DataFrame, dict[tuple[str, str], int]]:
    """Import-format counts (one row per option, zeros included) and the planted seeds.

    Columns: family, stage, stage_order, model, task, prompt, prompt_id, option, count,
    n_invalid (always 0). ``seed_prompts`` fixes the planted prompt id per (family, task);
    others are drawn at random. Returns the frame and {(family, task): planted prompt id}.
    """
    rng = np.random.default_rng(random_seed)
    shape = (len(families), len(tasks))
    planted = rng.integers(0, n_prompts, size=shape)
    for (family, task), prompt_id in (seed_prompts or {}).items():
        planted[list(families).index(family), list(tasks).index(task)] = prompt_id
    base = rng.dirichlet(np.full(n_options, concentration), size=(*shape, n_prompts))
    seed = np.take_along_axis(base, planted[..., None, None], axis=2)  # (F, T, 1, K)
    later = np.broadcast_to(seed, (*shape, n_prompts, n_options))
    probabilities = np.stack([base] + [later] * (len(stages) - 1), axis=1)  # (F, S, T, N, K)
    counts = rng.multinomial(n_samples, probabilities)

    index = pl.DataFrame(
        dict(zip("fstpo", np.indices(counts.shape, dtype=np.int32).reshape(5, -1)))
    )
    frame = index.select(
        _names("f", families).alias("family"),
        _names("s", stages).alias("stage"),
        pl.col("s").cast(pl.Int64).alias("stage_order"),
        _names("t", tasks).alias("task"),
        pl.format("p{}", pl.col("p").cast(pl.String).str.zfill(3)).alias("prompt"),
        pl.col("p").cast(pl.Int64).alias("prompt_id"),
        pl.format("o{}", pl.col("o").cast(pl.String).str.zfill(2)).alias("option"),
        pl.Series("count", counts.reshape(-1).astype(np.int64)),
        pl.lit(0, pl.Int64).alias("n_invalid"),
    ).with_columns(model=pl.concat_str("family", pl.lit("-"), "stage"))
    seeds = {
        (family, task): int(planted[i, j])
        for i, family in enumerate(families)
        for j, task in enumerate(tasks)
    }
    return frame, seeds


def _names(code: str, names: Sequence[str]) -> pl.Expr:
    """The name of each integer code in column ``code``."""
    return pl.col(code).replace_strict(dict(enumerate(names)), return_dtype=pl.String)
