"""Synthetic counts with a planted seed, for tests, benchmarks and demonstrations.

Every family's base prompts get their own random distribution (a sparse Dirichlet draw:
liquid). One base prompt per (family, task) is the planted seed; every later stage (SFT,
DPO, RL...) draws every prompt's samples from that seed distribution, so the analysis
should find the planted prompt, call the base liquid, SFT nucleated and the later stages
settled. Generated in whole arrays (no Python loop over rows), so millions of rows are fast.

``checkpoint_counts`` does the same over checkpoints: at checkpoint c every prompt answers
with the mixture ``(1 - w_c) * P[base, p] + w_c * S`` of its liquid base distribution and the
seed, so a step in the weights plants a transition and a ramp a drift.
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
    planted, base, seed = _liquid_base_and_seed(rng, families, tasks, n_prompts, n_options,
                                                concentration, seed_prompts)
    later = np.broadcast_to(seed, base.shape)
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



def _liquid_base_and_seed(rng, families, tasks, n_prompts, n_options, concentration,
                          seed_prompts):
    """Per (family, task): the planted prompt id, every base prompt's distribution drawn
    from a Dirichlet (shape (F, T, N, K)), and the planted prompt's one (the seed, (F, T, 1,
    K))."""
    shape = (len(families), len(tasks))
    planted = rng.integers(0, n_prompts, size=shape)
    for (family, task), prompt_id in (seed_prompts or {}).items():
        planted[list(families).index(family), list(tasks).index(task)] = prompt_id
    base = rng.dirichlet(np.full(n_options, concentration), size=(*shape, n_prompts))
    return planted, base, np.take_along_axis(base, planted[..., None, None], axis=2)

def checkpoint_counts(
    *,
    checkpoints: Sequence[tuple[str, int | None]],
    weights: Sequence[float],
    families: Sequence[str] = ("fam_a",),
    tasks: Sequence[str] = ("digit",),
    n_prompts: int = 8,
    n_options: int = 10,
    n_samples: int = 400,
    concentration: float = 0.3,
    seed_prompts: dict[tuple[str, str], int] | None = None,
    rounded: bool = False,
    random_seed: int = 0,
) -> tuple[pl.DataFrame, dict[tuple[str, str], int]]:
    """Import-format counts over checkpoints, with a step column, and the planted seeds.

    ``checkpoints``: (stage, step) in order (the first stage is the base; stage orders are
    the stages' positions); ``weights``: per checkpoint, the seed's share ``w_c`` of every
    prompt's distribution (0: the liquid base prompts, 1: the seed). ``rounded``: counts are
    ``n_samples * P`` rounded by largest remainder (deterministic, no sampling noise)
    instead of multinomial draws. Columns as :func:`planted_counts`, plus ``step``.
    """
    if len(weights) != len(checkpoints):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(weights)} weights")
    rng = np.random.default_rng(random_seed)
    planted, base, seed = _liquid_base_and_seed(rng, families, tasks, n_prompts, n_options,
                                                concentration, seed_prompts)
    w = np.asarray(weights, dtype=float)[None, :, None, None, None]
    probabilities = (1 - w) * base[:, None] + w * seed[:, None]  # (F, C, T, N, K)
    if rounded:
        scaled = probabilities * n_samples
        counts = np.floor(scaled).astype(np.int64)
        short = n_samples - counts.sum(axis=-1, keepdims=True)
        order = np.argsort(-(scaled - counts), axis=-1, kind="stable")
        extra = (np.argsort(order, axis=-1, kind="stable") < short).astype(np.int64)
        counts += extra
    else:
        counts = rng.multinomial(n_samples, probabilities)

    stage_names = list(dict.fromkeys(stage for stage, _ in checkpoints))
    index = pl.DataFrame(
        dict(zip("fctpo", np.indices(counts.shape, dtype=np.int32).reshape(5, -1)))
    )
    steps = [step for _, step in checkpoints]
    frame = index.select(
        _names("f", families).alias("family"),
        _names("c", [stage for stage, _ in checkpoints]).alias("stage"),
        pl.col("c").replace_strict(
            {c: stage_names.index(stage) for c, (stage, _) in enumerate(checkpoints)},
            return_dtype=pl.Int64,
        ).alias("stage_order"),
        pl.col("c").replace_strict(dict(enumerate(steps)), return_dtype=pl.Int64).alias("step"),
        _names("t", tasks).alias("task"),
        pl.format("p{}", pl.col("p").cast(pl.String).str.zfill(3)).alias("prompt"),
        pl.col("p").cast(pl.Int64).alias("prompt_id"),
        pl.format("o{}", pl.col("o").cast(pl.String).str.zfill(2)).alias("option"),
        pl.Series("count", counts.reshape(-1).astype(np.int64)),
        pl.lit(0, pl.Int64).alias("n_invalid"),
    ).with_columns(
        model=pl.concat_str(
            "family", pl.lit("-"), "stage",
            pl.when(pl.col("step").is_not_null()).then(
                pl.format("-{}", pl.col("step"))
            ).otherwise(pl.lit("")),
        )
    )
    seeds = {
        (family, task): int(planted[i, j])
        for i, family in enumerate(families)
        for j, task in enumerate(tasks)
    }
    return frame, seeds
