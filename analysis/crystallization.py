"""Crystallization analysis: per (family, task, condition) results, cross-family seed
prediction, temperature sweeps and checkpoint trajectories.

``analyze(engine, ...)`` reads the store and ``analyze_data(data, ...)`` works on a
:class:`~analysis.frames.CountData`; both return a :class:`CrystallizationResult`, which
gives the JSON contract of ``catalog analyze`` (``to_dict``) and the same numbers as Polars
DataFrames (``stages``, ``tasks``, ``cross_family``).

Conditions (docs/metrics.md, section 11): every metric is computed per (family, task,
condition); runs of different conditions are never pooled, cross-family pairs are formed
within one condition, and a (family, task) sampled at several temperatures of otherwise one
condition also gets a temperature sweep (:mod:`analysis.sweeps`).

Checkpoints (section 12): the stage metrics use each stage's final checkpoint (the highest
step, or the stage's step-less model, which is taken to come after its steps); the
trajectories (:mod:`analysis.trajectories`) run over every checkpoint, with the stage
metrics' seed.

Choices the contract leaves open (also in the README):

- Stage roles, per (family, task), among the stages sampled for that task: *base* is the
  stage with stage_order 0, else the stage named "base"; *sft* is the stage named "sft"
  (case-insensitive), else the stage with stage_order 1; the stages after SFT in stage order
  are the *settling* stages (the ones that get a ``settled`` verdict).
- A prompt of a stage is usable when it has at least ``min_samples`` (default 1) valid
  samples (exact mode: any positive probability on ``O_t``); others are excluded from that
  stage and listed in ``excluded_prompts`` and ``problems``.
- ``status``: "ok"; "missing_stage" (no base or no SFT stage sampled for the task);
  "too_few_samples" (the base or SFT stage has no usable prompt). Metrics that can still be
  computed (entropy, liquidity, proxy ProbMass...) are reported either way.
- Held-out seed check: the SFT prompts with *even* prompt ids choose the seed (half a), the
  *odd* ones evaluate it (half b): ``heldout.mse = MSE(Pbar_odd[sft], P[base, p*_even])``,
  ``heldout.nucleation_ratio = heldout.mse / MSE(Pbar_odd[sft], Pbar[base])``;
  ``seed_prompt_b`` is the seed the odd half would choose, ``same_seed`` compares the two.
- Verdicts use three-valued logic: null when a needed metric is undefined, unless another
  condition already makes the verdict false.
- Cross-family pairs: every ordered pair of selected families that both sampled the task.
  A pair is compared (``status`` "ok") when both have a seed and their base stages were
  sampled on the same prompt ids; otherwise ``status`` says why and the numbers are null.
- Bootstrap: each (family, task, condition) has its own random stream seeded by (seed,
  family, task, condition_key), so its intervals do not depend on which other families or
  conditions are selected; its trajectories have another stream of their own. Replicates
  where a metric is undefined are left out of its percentiles. Cross-family intervals pair
  replicate r of A with replicate r of B (independent resamples of independent data).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import Engine

from analysis import metrics, trajectories
from analysis.branching import stage_branching
from analysis.frames import CountData, read_counts
from analysis.groups import GroupResult, Problem
from analysis.layout import GroupSpec, Layout
from analysis.options import AnalysisOptions, ConditionSelection
from analysis.results import (
    CROSS_METRICS,
    SCALAR_METRICS,
    STAGE_METRICS,
    CrossResult,
    CrystallizationResult,
    GroupTrajectories,
)
from analysis.sweeps import temperature_sweeps
from analysis.validity import validity_problems, validity_records, validity_table

# Bootstrap chunks hold about this many floats in the pairwise-JSD step (bounds memory).
_CHUNK_FLOATS = 4_000_000


def analyze(
    engine: Engine,
    *,
    families: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    mode: str = "sampled",
    options: AnalysisOptions | None = None,
    conditions: ConditionSelection | None = None,
) -> CrystallizationResult:
    """Read the selected counts from the store and analyze them (``conditions``: only runs
    with these sampling parameters).

    Example: ``analyze(engine, families=["OLMo 2 7B"], options=AnalysisOptions(bootstrap=1000))``
    """
    options = options or AnalysisOptions()
    options.validate(mode)
    data = read_counts(engine, families=families, tasks=tasks, mode=mode, conditions=conditions)
    return analyze_read(engine, data, options, families=families, tasks=tasks)


def analyze_read(engine: Engine, data: CountData, options: AnalysisOptions, *,
                 families: Sequence[str] | None = None,
                 tasks: Sequence[str] | None = None) -> CrystallizationResult:
    """:func:`analyze_data` on counts read from the store, with what only the store knows
    (the validity of the samples behind them): for callers that use ``data`` again."""
    result = analyze_data(data, options)
    if data.mode == "sampled":
        table = validity_table(engine, families=families, tasks=tasks,
                               condition_keys=data.units["condition_key"].unique().to_list())
        result.validity = validity_records(table)
        problems = validity_problems(table)
        result.extra_problems.extend(problems)
        result.warnings.extend(problem.message for problem in problems)
    return result


def analyze_data(data: CountData, options: AnalysisOptions | None = None) -> CrystallizationResult:
    """Analyze counts already in memory (a pure function of the frames in ``data``)."""
    options = options or AnalysisOptions()
    options.validate(data.mode)
    layout = Layout.build(data)
    groups = [_analyze_group(layout, spec, options, data.mode) for spec in layout.groups]
    branching = stage_branching(data)
    for g in groups:
        g.branching = {
            stage: branching.get((g.family, g.task, g.condition_key, stage, step))
            for stage, step in zip(g.stages, g.steps)
        }
        if options.bootstrap:
            g.branching = {
                stage: None if bf is None else bf.bootstrapped(
                    options.bootstrap, np.random.default_rng(_stream(options, g, "bf", stage)))
                for stage, bf in g.branching.items()
            }
    cross: list[CrossResult] = []
    for key in dict.fromkeys((g.task, g.condition_key) for g in groups):
        sampled = [g for g in groups if (g.task, g.condition_key) == key and g.stages]
        replicates = _bootstrap_task(sampled, options) if options.bootstrap else None
        cross.extend(_cross_family(sampled, replicates))
    with_trajectories = options.trajectories
    if with_trajectories is None:  # on when some stage has several checkpoints
        with_trajectories = any(len(s.checkpoints) > len(s.stages) for s in layout.groups)
    series, extra = [], [p for c in cross for p in _cross_problems(c)]
    if with_trajectories:
        for spec, group in zip(layout.groups, groups):
            if group.usable.any():
                series.append(_group_trajectories(layout, spec, group, options, data.mode))
                extra.extend(_trajectory_holes(layout, spec, options, data.mode))
    _note_stages_of_other_families(groups)
    thresholds = {**asdict(options), "trajectories": with_trajectories, "mode": data.mode}
    return CrystallizationResult(
        thresholds, groups, cross, trajectories=series,
        sweeps=temperature_sweeps(groups, options.reference_temperature),
        warnings=_stale_warning(data), extra_problems=extra,
    )


def _note_stages_of_other_families(groups: list[GroupResult]) -> None:
    """A stage that other families sampled for the task (in the condition) and this family
    did not is named in its problems."""
    by_key: dict[tuple[str, str], list[GroupResult]] = {}
    for g in groups:
        by_key.setdefault((g.task, g.condition_key), []).append(g)
    for members in by_key.values():
        for g in members:
            if not g.stages:
                continue
            mine = {s.casefold() for s in g.stages}
            others = dict.fromkeys(s for o in members if o is not g for s in o.stages
                                   if s.casefold() not in mine)
            for stage in others:
                g.problems.append(Problem(
                    "missing_stage", f"stage {stage}, sampled for other families of this task, "
                    "was not sampled for this family", g.family, g.task, g.condition_key,
                    stage=stage,
                ))


def _cross_problems(c: CrossResult) -> list[Problem]:
    where = dict(family=c.family_a, family_b=c.family_b, task=c.task,
                 condition_key=c.condition_key)
    if c.status != "ok":
        return [Problem("cross_family_not_compared",
                        f"{c.family_a} -> {c.family_b}: {c.status}", **where)]
    if np.isnan(c.values.get("predictive_ratio", np.nan)):
        return [Problem("undefined_value", f"{c.family_a} -> {c.family_b}: predictive_ratio is "
                        f"undefined: MSE(Pbar_B[sft], Pbar_A[base]) is 0",
                        metric="predictive_ratio", **where)]
    return []


def _trajectory_holes(
    layout: Layout, spec: GroupSpec, options: AnalysisOptions, mode: str
) -> list[Problem]:
    """Checkpoints before a stage's final one (the stage metrics name the final ones' holes)
    where a prompt that is usable elsewhere in the series is missing or unusable: the
    trajectory's point there averages fewer prompts, or is undefined without any."""
    counts = layout.block(spec)
    usable = _usable(counts, layout.cells(spec, layout.sampled), options, mode)
    anywhere = usable.any(axis=0)
    keys = layout.prompt_keys[spec.task]
    problems = []
    for c, (stage, step) in enumerate(spec.checkpoints):
        holes = [keys[j] for j in np.flatnonzero(anywhere & ~usable[c])]
        if c in spec.finals or not holes:
            continue
        where = "" if step is None else f" step {step}"
        effect = ("it has no usable prompt: every series is undefined there" if not usable[c].any()
                  else "its points average the other prompts")
        problems.append(Problem(
            "trajectory_hole", f"checkpoint {stage}{where}: {len(holes)} prompt(s) missing or "
            f"unusable ({_shorten(holes)}); {effect}", spec.family, spec.task,
            spec.condition_key, stage=stage, step=step, prompts=holes,
        ))
    return problems


def _stale_warning(data: CountData) -> list[str]:
    if not data.stale_runs:
        return []
    return [
        f"{data.stale_runs} of the selected runs are stale: their task's options or normalizer "
        "changed after they were normalized; re-normalize them with `catalog renormalize`"
    ]


def stage_roles(stages: Sequence[str], orders: Sequence[int]) -> metrics.StageRoles:
    """Base: stage_order 0, else named "base"; SFT: named "sft", else stage_order 1."""
    names = [s.casefold() for s in stages]

    def first(condition) -> int | None:
        return next((i for i in range(len(stages)) if condition(i)), None)

    base = first(lambda i: orders[i] == 0)
    if base is None:
        base = first(lambda i: names[i] == "base")
    sft = first(lambda i: names[i] == "sft" and i != base)
    if sft is None:
        sft = first(lambda i: orders[i] == 1 and i != base)
    return metrics.StageRoles(base=base, sft=sft)


# ----- one (family, task) ------------------------------------------------------------------


def _analyze_group(
    layout: Layout, spec: GroupSpec, options: AnalysisOptions, mode: str
) -> GroupResult:
    task, kind = spec.task, layout.kinds[spec.task]
    option_names, prompt_keys = layout.options[task], layout.prompt_keys[task]
    prompt_ids = layout.prompt_ids[task]
    roles = stage_roles(spec.stages, spec.stage_orders)
    # The stage metrics use each stage's final checkpoint.
    counts = layout.block(spec)[spec.finals]
    sampled = layout.cells(spec, layout.sampled)[spec.finals]
    usable = _usable(counts, sampled, options, mode)
    totals = counts.sum(axis=-1)
    p = np.where(usable[..., None], counts / np.where(usable, totals, 1.0)[..., None], 0.0)

    problems: list[Problem] = []

    def note(kind_: str, message: str, **where) -> None:
        problems.append(Problem(kind_, message, spec.family, task, spec.condition_key, **where))

    if not spec.stages:
        note("no_runs", "no done runs of this family for this task")
    excluded: dict[str, list[str]] = {}
    for i, stage in enumerate(spec.stages):
        step = spec.checkpoints[spec.finals[i]][1]
        dropped = np.flatnonzero(sampled[i] & ~usable[i])
        if len(dropped):
            excluded[stage] = [prompt_keys[j] for j in dropped]
        none_valid = [prompt_keys[j] for j in dropped if totals[i, j] <= 0]
        thin = [prompt_keys[j] for j in dropped if totals[i, j] > 0]
        for kind_, keys, why in (
            ("no_valid_samples", none_valid, "no valid sample"),
            ("too_few_samples", thin, f"fewer than {options.min_samples} valid samples"),
        ):
            if keys:
                note(kind_, f"stage {stage}: {len(keys)} prompt(s) excluded for having {why}: "
                     f"{_shorten(keys)}", stage=stage, step=step, prompts=keys)
        missing = [prompt_keys[j] for j in np.flatnonzero(sampled.any(axis=0) & ~sampled[i])]
        if missing:
            note("missing_prompt", f"stage {stage}: {len(missing)} prompt(s) sampled at other "
                 f"stages were not sampled here: {_shorten(missing)}",
                 stage=stage, step=step, prompts=missing)
    if task in layout.outside_options and spec.stages:
        note("outside_options",
             f"{layout.outside_options[task]:g} samples (all families) with options outside "
             "the task's closed option list were left out")

    status = "ok"
    for role, index in (("base", roles.base), ("SFT", roles.sft)):
        if not spec.stages:
            break
        if index is None:
            status = "missing_stage"
            rule = {"base": "stage_order 0 or named 'base'", "SFT": "named 'sft' or stage_order 1"}[
                role
            ]
            note("missing_stage", f"no {role} stage ({rule}) was sampled for this task",
                 role=role.lower())
        elif not usable[index].any():
            status = "too_few_samples" if status == "ok" else status
            note("no_usable_prompt", f"the {role} stage {spec.stages[index]} has no usable prompt",
                 stage=spec.stages[index], role=role.lower())
    if roles.sft is not None and roles.sft == len(spec.stages) - 1:
        note("no_settling_stage", "no stage after SFT was sampled for this task: no settled "
             "verdict", role="settling")
    for i, stage in enumerate(spec.stages):
        if usable[i].sum() == 1:
            note("undefined_value", f"stage {stage}: only one usable prompt, liquidity is "
                 "undefined", stage=stage, metric="liquidity")
    if roles.base is not None and roles.sft is not None and usable[roles.sft].any():
        for parity, name in ((0, "even"), (1, "odd")):
            if not (usable[roles.sft] & (prompt_ids % 2 == parity)).any():
                note("undefined_value", f"held-out check: no usable SFT prompt with an {name} "
                     "prompt id", metric="heldout")

    closed = kind == "closed"
    values: dict[str, np.ndarray] = {}
    if usable.any():
        sizes = totals if mode == "sampled" else None
        point = metrics.group_metrics(
            p[None], usable, roles, prompt_ids, options.tau, closed, sizes
        )
        values = {k: v[0] for k, v in _with_derived(point, len(option_names), closed).items()}
    elif spec.stages and not option_names:
        note("no_options", "no valid sample of this task in the selection: no option to analyze")
    _note_undefined(values, roles, len(option_names), closed, note)

    support: list[str] = []
    seed = int(values.get("seed", -1))
    if seed >= 0:
        seed_distribution = p[roles.base, seed]
        in_support = metrics.seed_support(seed_distribution, options.tau)
        order = metrics.tie_aware_order(seed_distribution)
        support = [option_names[i] for i in order if in_support[i]]

    group = GroupResult(
        family=spec.family,
        task=task,
        condition_key=spec.condition_key,
        condition=layout.conditions.get(spec.condition_key, {}),
        steps=[spec.checkpoints[i][1] for i in spec.finals],
        checkpoints=list(spec.checkpoints),
        kind=kind,
        options=option_names,
        stages=spec.stages,
        stage_orders=spec.stage_orders,
        roles=roles,
        status="missing_stage" if not spec.stages else status,
        problems=problems,
        prompt_keys=prompt_keys,
        prompt_ids=prompt_ids,
        n_prompts=usable.sum(axis=1),
        excluded_prompts=excluded,
        validity=_validity(layout, spec, mode),
        values=values,
        seed_support=support,
        verdict={},
        counts=counts,
        distributions=p,
        sampled=sampled,
        usable=usable,
    )
    group.verdict = _verdict(group, options)
    return group


def _note_undefined(values: dict, roles: metrics.StageRoles, n_options: int, closed: bool,
                    note) -> None:
    """Name the undefined ratios of a group that has the stages they need, with the reason."""
    if closed and values and n_options < 2:
        note("undefined_value", f"the task has {n_options} option(s): normalized entropy is "
             "undefined", metric="normalized_entropy")
    for name, what in (("nucleation_ratio", "MSE(Pbar[sft], Pbar[base])"),
                       ("heldout_nucleation_ratio", "MSE(Pbar_odd[sft], Pbar[base])")):
        value = values.get(name)
        if value is None or not np.isnan(value):
            continue
        if name == "nucleation_ratio" and int(values["seed"]) < 0:
            continue  # the missing or unusable stage is already named
        if name == "heldout_nucleation_ratio" and np.isnan(values["heldout_mse"]):
            continue  # an empty half (or no seed), already named
        note("undefined_value", f"{name} is undefined: its denominator {what} is 0 (SFT "
             "equals the base mean" + (", as with a single option)" if n_options < 2 else ")"),
             metric=name)


def _usable(
    counts: np.ndarray, sampled: np.ndarray, options: AnalysisOptions, mode: str
) -> np.ndarray:
    """Usable (checkpoint, prompt) cells: sampled, with at least ``min_samples`` valid samples
    (exact mode: any positive probability on O_t)."""
    minimum = options.min_samples if mode == "sampled" else np.finfo(float).tiny
    return sampled & (counts.sum(axis=-1) >= minimum)


def _validity(layout: Layout, spec: GroupSpec, mode: str) -> np.ndarray:
    """Per stage (its final checkpoint): valid / (valid + invalid) samples; exact mode: the
    mean covered mass."""
    if mode == "sampled":
        valid = layout.cells(spec, layout.n_valid)[spec.finals].sum(axis=1)
        invalid = layout.cells(spec, layout.n_invalid)[spec.finals].sum(axis=1)
        return metrics.ratio(valid, valid + invalid)
    sampled = layout.cells(spec, layout.sampled)[spec.finals]
    covered = np.where(sampled, layout.cells(spec, layout.covered_mass)[spec.finals], np.nan)
    known = ~np.isnan(covered)
    return metrics.ratio(np.where(known, covered, 0.0).sum(axis=1), known.sum(axis=1))


def _with_derived(
    values: dict[str, np.ndarray], n_options: int, closed: bool
) -> dict[str, np.ndarray]:
    """Add 2^H and (closed tasks) H / log2 |O_t| for the mean-prompt and pooled entropies."""
    out = dict(values)
    for which in ("mean_prompt", "pooled"):
        h = values[f"entropy_{which}"]
        out[f"effective_options_{which}"] = metrics.effective_options(h)
        if closed:
            out[f"normalized_entropy_{which}"] = metrics.normalized_entropy(h, n_options)
    return out


def _verdict(group: GroupResult, options: AnalysisOptions) -> dict:
    """Phase verdicts (metrics.md section 7), three-valued: None where undefined."""
    point = _verdict_arrays({k: np.asarray(v)[None] for k, v in group.values.items()},
                            group.roles, len(group.stages), options)

    def value(x: np.ndarray) -> bool | None:
        return None if np.isnan(x[0]) else bool(x[0])

    return {
        "liquid": value(point["liquid"]),
        "nucleated": value(point["nucleated"]),
        "settled": {group.stages[i]: value(x) for i, x in point["settled"].items()},
    }


def _verdict_arrays(
    v: dict[str, np.ndarray], roles: metrics.StageRoles, n_stages: int, options: AnalysisOptions
) -> dict:
    """The verdicts of a batch of values (leading axis: replicates) as 1.0 / 0.0 / NaN
    (undefined): ``liquid`` and ``nucleated`` (B,), ``settled`` {stage index: (B,)}."""
    batch = next(iter(v.values())).shape[0] if v else 1

    def at(name: str, index: int | None) -> np.ndarray:
        if index is None or name not in v:
            return np.full(batch, np.nan)
        return np.asarray(v[name], dtype=float)[:, index]

    def test(values: np.ndarray, holds: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(values), np.nan, holds.astype(float))

    liquidity_base = at("liquidity", roles.base)
    probmass_sft = at("probmass", roles.sft)
    ratio = np.asarray(v.get("nucleation_ratio", np.full(batch, np.nan)), dtype=float)
    drop = at("liquidity", roles.sft) - liquidity_base
    with np.errstate(invalid="ignore"):
        parts = np.stack([
            test(ratio, ratio < options.nucleation_ratio_threshold),
            test(drop, drop < 0),
            test(probmass_sft, probmass_sft >= options.probmass_threshold),
        ])
        # Three-valued "and": false if any part is false, else undefined if any is.
        nucleated = np.where((parts == 0).any(axis=0), 0.0,
                             np.where(np.isnan(parts).any(axis=0), np.nan, 1.0))
        settled = {}
        if roles.sft is not None:
            floor = probmass_sft - options.settle_tolerance  # NaN when ProbMass[sft] is
            for i in range(roles.sft + 1, n_stages):
                margin = at("probmass", i) - floor
                settled[i] = test(margin, margin >= 0)
        liquid = test(liquidity_base, liquidity_base >= options.liquid_threshold)
    return {"liquid": liquid, "nucleated": nucleated, "settled": settled}


def _verdict_support(group: GroupResult, arrays: dict[str, np.ndarray],
                     options: AnalysisOptions) -> dict:
    """The share of replicates in which each of the data's verdicts holds (None where the
    data's verdict is undefined)."""
    boot = _verdict_arrays(arrays, group.roles, len(group.stages), options)

    def share(point: bool | None, replicates: np.ndarray) -> float | None:
        return None if point is None else float(np.mean(replicates == float(point)))

    verdict = group.verdict
    return {
        "liquid": share(verdict["liquid"], boot["liquid"]),
        "nucleated": share(verdict["nucleated"], boot["nucleated"]),
        "settled": {group.stages[i]: share(verdict["settled"][group.stages[i]], x)
                    for i, x in boot["settled"].items()},
    }


# ----- bootstrap ---------------------------------------------------------------------------


@dataclass
class _Replicates:
    """A family's bootstrap arrays that its task's cross-family intervals need (the base
    ones only where the family has a seed)."""

    sft_mean: np.ndarray  # (B, K)
    base: np.ndarray | None = None  # (B, N, K) base prompt distributions
    base_mean: np.ndarray | None = None  # (B, K)
    seed: np.ndarray | None = None  # (B,)


def _bootstrap_task(
    groups: list[GroupResult], options: AnalysisOptions
) -> dict[str, _Replicates]:
    """Bootstrap each family of one task: fills ``ci`` and ``seed_stability`` in place."""
    kept: dict[str, _Replicates] = {}
    for g in groups:
        if not g.usable.any():
            g.ci = {}  # nothing to resample
            continue
        s, n, k = g.counts.shape
        per_replicate = s * max(n * (n - 1) // 2, n, 1) * max(k, 1)
        chunk = max(1, min(options.bootstrap, _CHUNK_FLOATS // per_replicate))
        rng = np.random.default_rng(_stream(options, g))
        closed = g.kind == "closed"
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, options.bootstrap, chunk):
            p = metrics.resample_distributions(
                g.counts, g.usable, min(chunk, options.bootstrap - start), rng
            )
            out = metrics.group_metrics(
                p, g.usable, g.roles, g.prompt_ids, options.tau, closed, g.counts.sum(axis=-1)
            )
            out = _with_derived(out, len(g.options), closed)
            if "seed" in out:
                out["base"] = p[:, g.roles.base]
                out["base_mean"] = out["pbar"][:, g.roles.base]
            if g.roles.sft is not None:
                out["sft_mean"] = out["pbar"][:, g.roles.sft]
            for name, array in out.items():
                parts.setdefault(name, []).append(array)
        arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        g.ci = {
            name: metrics.percentile_interval(arrays[name])
            for name in (*STAGE_METRICS, *SCALAR_METRICS)
            if name in arrays
        }
        g.verdict_support = _verdict_support(g, arrays, options)
        g.support_threshold = options.verdict_support
        if g.seed_index >= 0:
            g.seed_stability = float(np.mean(arrays["seed"] == g.seed_index))
            kept[g.family] = _Replicates(
                arrays["sft_mean"], arrays["base"], arrays["base_mean"], arrays["seed"]
            )
        elif "sft_mean" in arrays:
            kept[g.family] = _Replicates(arrays["sft_mean"])
    return kept


def _stream(options: AnalysisOptions, g: GroupResult, *purpose: str) -> list[int]:
    """The seed of a group's own random stream: (seed, family, task, condition, purpose)."""
    names = (g.family, g.task, g.condition_key, *purpose)
    return [options.seed, *(zlib.crc32(name.encode()) for name in names)]


# ----- checkpoint trajectories -------------------------------------------------------------


def _group_trajectories(
    layout: Layout, spec: GroupSpec, group: GroupResult, options: AnalysisOptions, mode: str
) -> GroupTrajectories:
    """The series of one (family, task, condition) over all its checkpoints, with the stage
    metrics' seed S and support Sigma (docs/metrics.md, section 12). Cells the stage metrics
    would exclude (too few valid samples) are left out at every checkpoint. The bootstrap
    re-chooses the seed per replicate from the base and final SFT checkpoints, as the stage
    metrics' bootstrap does."""
    counts = layout.block(spec)
    usable = _usable(counts, layout.cells(spec, layout.sampled), options, mode)
    data = np.where(usable[..., None], counts, 0.0)
    seed = support = rule = None
    if group.seed_index >= 0:
        roles = group.roles
        seed = group.distributions[roles.base, group.seed_index]
        support = metrics.seed_support(seed, options.tau)
        rule = trajectories.SeedRule(spec.finals[roles.base], spec.finals[roles.sft], options.tau)
    series = trajectories.trajectories(
        spec.checkpoints,
        list(data),
        seed,
        support,
        replicates=options.bootstrap,
        rng=np.random.default_rng(_stream(options, group, "trajectories")),
        seed_rule=rule,
    )
    return GroupTrajectories(group.family, group.task, group.condition_key, group.condition, series)


# ----- cross-family ------------------------------------------------------------------------


def _cross_family(
    groups: list[GroupResult], replicates: dict[str, _Replicates] | None
) -> list[CrossResult]:
    """Seed prediction for every ordered pair of families sampled on one task. The pair
    needs A's seed and B's SFT stage distribution only (B may lack a base stage)."""
    results = []
    for a in groups:
        for b in groups:
            if a is b:
                continue
            seed_a, seed_b = a.seed_index, b.seed_index
            result = CrossResult(
                a.family, b.family, a.task, "ok", a.prompt_key(seed_a), b.prompt_key(seed_b),
                condition_key=a.condition_key, condition=a.condition,
            )
            results.append(result)
            b_sft = b.roles.sft is not None and bool(b.usable[b.roles.sft].any())
            if seed_a < 0 or not b_sft:
                lacking = [f"no seed for {a.family} ({a.status})"] if seed_a < 0 else []
                if not b_sft:
                    lacking.append(f"no usable SFT stage for {b.family} ({b.status})")
                result.status = " and ".join(lacking)
                continue
            # B's base stage where it has one, else its SFT stage, on A's base prompt ids.
            b_prompts = b.sampled[b.roles.base if b.roles.base is not None else b.roles.sft]
            if not np.array_equal(a.sampled[a.roles.base], b_prompts):
                which = "base stages" if b.roles.base is not None else (
                    f"base stage of {a.family} and the SFT stage of {b.family}"
                )
                result.status = f"the {which} were sampled on different prompt sets"
                continue
            point = metrics.cross_family_metrics(
                a.distributions[a.roles.base][None],
                a.usable[a.roles.base],
                a.values["pbar"][a.roles.base][None],
                np.array([seed_a]),
                b.values["pbar"][b.roles.sft][None],
            )
            result.values = {name: float(array[0]) for name, array in point.items()}
            if seed_b >= 0:
                result.same_seed_prompt = bool(a.prompt_ids[seed_a] == b.prompt_ids[seed_b])
            if replicates is not None:
                ra, rb = replicates[a.family], replicates[b.family]
                boot = metrics.cross_family_metrics(
                    ra.base, a.usable[a.roles.base], ra.base_mean, ra.seed, rb.sft_mean
                )
                result.ci = {}
                for name in CROSS_METRICS:
                    low, high = metrics.percentile_interval(boot[name])
                    result.ci[name] = (float(low), float(high))
    return results


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
