"""``catalog report``: the study's figures as one self-contained HTML file plus PNG files.

``build_report(engine, output_dir, ...)`` analyzes the selection (the same
:func:`analysis.crystallization.analyze` as ``catalog analyze``) and ``write_report(result,
output_dir)`` draws it: ``output_dir/report.html`` embeds every figure as a base64 PNG data
URI with inline CSS and no scripts, so it opens offline and can be mailed as one file; each
figure is also written to ``output_dir/figures/<name>.png`` under a stable, descriptive name
(``<task>-base-prompts``, ``<task>-stage-distributions``, ``<task>-trajectories``,
``<task>-cross-family``, ``<task>-checkpoints`` with checkpoint trajectories,
``all-tasks-trajectories``, ``all-tasks-cross-family``, ``<task>-temperature-sweep``).
With several sampling conditions in the selection each (task, condition) has its own
section and the condition is part of its figures' names (``<task>-t-0-7-24-tokens-...``).

matplotlib is imported inside ``write_report`` (through :mod:`analysis.plots`), so importing
this module, and ``catalog --help``, stay fast.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import polars as pl
from sqlalchemy import Engine

from analysis.crystallization import AnalysisOptions, analyze_read
from analysis.frames import read_counts
from analysis.groups import GroupResult
from analysis.options import ConditionSelection
from analysis.results import CrossResult, CrystallizationResult, verdict_word
from analysis.sensitivity import sensitivity
from analysis.sweeps import TemperatureSweep
from analysis.values import condition_label, json_number
from catalog import __version__
from catalog.errors import NotFound

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
OVERALL = "all-tasks"


@dataclass(frozen=True)
class ReportFigure:
    """One figure: its file, its heading and the text that says how to read it."""

    name: str
    path: Path
    title: str
    caption: str
    data_uri: str


@dataclass(frozen=True)
class ReportSummary:
    """What ``build_report`` wrote."""

    path: Path
    figures: list[Path]
    families: list[str]
    tasks: list[str]
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"wrote {self.path} with {len(self.figures)} figures "
            f"({len(self.tasks)} tasks, {len(self.families)} families)"
        )


def build_report(
    engine: Engine,
    output_dir: str | Path,
    *,
    families: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    mode: str = "sampled",
    options: AnalysisOptions | None = None,
    conditions: ConditionSelection | None = None,
) -> ReportSummary:
    """Analyze the selected families, tasks and conditions and write the report to
    ``output_dir``.

    Raises NotFound (from the analysis) when the store or the selection holds no runs.

    Example: ``build_report(engine, "catalog-report", tasks=["digit"], options=AnalysisOptions(bootstrap=200))``
    """
    options = options or AnalysisOptions()
    options.validate(mode)
    data = read_counts(engine, families=families, tasks=tasks, mode=mode, conditions=conditions)
    result = analyze_read(engine, data, options, families=families, tasks=tasks)
    parsing = sensitivity(engine, data, options) if mode == "sampled" else None
    return write_report(result, output_dir, parsing)


def write_report(result: CrystallizationResult, output_dir: str | Path,
                 parsing: pl.DataFrame | None = None) -> ReportSummary:
    """Draw an analysis result: ``report.html`` and ``figures/*.png`` under ``output_dir``;
    ``parsing``: the strict and lenient readings' metrics (:mod:`analysis.sensitivity`)."""
    from analysis import plots

    groups = [g for g in result.groups if g.stages]
    if not groups:
        raise NotFound(
            "nothing to plot: the selection has no sampled stage for any (family, task); "
            "check `catalog analyze` and the --family/--task options"
        )
    with plots.style():
        return _draw(result, groups, Path(output_dir), parsing)


def _draw(result: CrystallizationResult, groups: list[GroupResult], output_dir: Path,
          parsing: pl.DataFrame | None) -> ReportSummary:
    from analysis import plots

    figures_dir = output_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    families = list(dict.fromkeys(g.family for g in groups))
    task_names = list(dict.fromkeys(g.task for g in groups))
    colors = plots.family_colors(families)
    thresholds = result.thresholds
    # One block of figures per condition; with one condition the names carry none.
    conditions = {g.condition_key: condition_label(g.condition) for g in groups}
    several = len(conditions) > 1
    names = [_section_name(task, label, several) for label in conditions.values()
             for task in task_names]
    if several:
        names += [_section_name(OVERALL, label, several) for label in conditions.values()]
    slugs = _unique_slugs(list(dict.fromkeys(names)), reserved={OVERALL})
    written: list[Path] = []

    def save(figure, name: str, title: str, caption: str) -> ReportFigure:
        data = plots.png_bytes(figure)
        path = figures_dir / f"{name}.png"
        path.write_bytes(data)
        written.append(path)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return ReportFigure(name, path, title, caption, uri)

    overall = []
    sections = []
    for key, label in conditions.items():
        block = [g for g in groups if g.condition_key == key]
        cross_block = [c for c in result.cross if c.condition_key == key]
        in_condition = f" ({label})" if several else ""
        overall_slug = OVERALL if not several else slugs[_section_name(OVERALL, label, several)]
        overall_orders, overall_labels = plots.stage_axis(block)
        overall.append(
            save(
                plots.trajectories_figure(
                    plots.averaged_trajectories(block, overall_orders), overall_labels, colors,
                    thresholds,
                ),
                f"{overall_slug}-trajectories",
                "Metric trajectories, averaged over tasks" + in_condition,
                _AVERAGED_CAPTION.format(n=len({g.task for g in block})),
            )
        )
        block_families = list(dict.fromkeys(g.family for g in block))
        if len(block_families) >= 2:
            overall.append(
                save(
                    plots.cross_family_figure(cross_block, block_families, "all tasks"),
                    f"{overall_slug}-cross-family",
                    "Cross-family seed prediction, all tasks" + in_condition,
                    _CROSS_OVERALL_CAPTION,
                )
            )
        for task in dict.fromkeys(g.task for g in block):
            task_groups = [g for g in block if g.task == task]
            slug = slugs[_section_name(task, label, several)]
            sections.append(
                _task_section(result, task_groups, cross_block, slug, colors, save, label, several)
            )

    sweeps = []
    for task in dict.fromkeys(s.task for s in result.sweeps):
        task_sweeps = [s for s in result.sweeps if s.task == task]
        name = f"{_unique_slugs([task], reserved=set())[task]}-temperature-sweep"
        sweeps.append(
            {
                "task": task,
                "figure": save(plots.temperature_sweep_figure(task_sweeps), name,
                               f"{task}: temperature sweep", _SWEEP_CAPTION),
                "rows": [_sweep_row(s) for s in task_sweeps],
            }
        )

    html = _render(
        title="Crystallization report",
        version=__version__,
        mode=thresholds.get("mode", "sampled"),
        thresholds=_threshold_rows(thresholds),
        families=families,
        tasks=task_names,
        several_conditions=several,
        warnings=list(result.warnings),
        validity=result.validity,
        sensitivity=[] if parsing is None or not parsing.height else parsing.to_dicts(),
        summary=[row for section in sections for row in section["rows"]],
        overall=overall,
        sweeps=sweeps,
        sections=sections,
        single_family=len(families) < 2,
        bootstrapped=bool(thresholds.get("bootstrap")),
        verdict_support=thresholds.get("verdict_support"),
    )
    path = output_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return ReportSummary(path, written, families, task_names, list(result.warnings))


def _section_name(task: str, condition: str, several: bool) -> str:
    """What a section's (and its figures') slug is made from: the task, and the condition
    when the report holds several."""
    return f"{task} {condition}" if several else task


def _task_section(
    result: CrystallizationResult,
    task_groups: list[GroupResult],
    cross: list[CrossResult],
    slug: str,
    colors: dict,
    save,
    condition: str,
    several: bool,
) -> dict[str, Any]:
    """One (task, condition) section: its tables, figures and trajectory readings."""
    from analysis import plots

    task = task_groups[0].task
    thresholds = result.thresholds
    orders, labels = plots.stage_axis(task_groups)
    figures = [
        save(plots.base_prompts_figure(task_groups, colors), f"{slug}-base-prompts",
             "Base prompts: the liquid", _BASE_CAPTION),
        save(plots.stage_distributions_figure(task_groups, colors),
             f"{slug}-stage-distributions", "Answer distributions by stage", _STAGES_CAPTION),
        save(
            plots.trajectories_figure(
                plots.task_trajectories(task_groups, orders), labels, colors, thresholds
            ),
            f"{slug}-trajectories",
            "Metric trajectories across stages",
            _TRAJECTORY_CAPTION + (_CI_NOTE if thresholds.get("bootstrap") else ""),
        ),
    ]
    task_cross = [c for c in cross if c.task == task]
    if len(task_groups) >= 2:
        figures.append(
            save(
                plots.cross_family_figure(task_cross, [g.family for g in task_groups], task,
                                          colorbar=False),
                f"{slug}-cross-family",
                "Cross-family seed prediction",
                _CROSS_TASK_CAPTION,
            )
        )
    key = task_groups[0].condition_key
    series = [t for t in result.trajectories
              if t.task == task and t.condition_key == key and t.series]
    readings = []
    if series:
        figures.append(
            save(plots.checkpoint_figure(series, colors), f"{slug}-checkpoints",
                 "Order parameters across checkpoints", _CHECKPOINT_CAPTION)
        )
        readings = [(t.family, [s.reading() for s in t.series]) for t in series]
    others = [p.message for p in result.extra_problems
              if p.task == task and p.condition_key == task_groups[0].condition_key]
    return {
        "task": task,
        "condition": condition if several else None,
        "problems": others,
        "anchor": f"task-{slug}",
        "kind": task_groups[0].kind,
        "n_options": len(task_groups[0].options),
        "n_prompts": len(task_groups[0].prompt_keys),
        "rows": [_summary_row(g, slug, condition) for g in task_groups],
        "cross": [_cross_row(c) for c in task_cross],
        "figures": figures,
        "readings": readings,
    }


# ----- table rows --------------------------------------------------------------------------


def _summary_row(g: GroupResult, slug: str, condition: str) -> dict[str, Any]:
    """One (family, task, condition) line of the verdict table."""

    def at(name: str, index: int | None) -> float | None:
        if index is None or name not in g.values:
            return None
        return json_number(g.values[name][index])

    ci = g.ci or {}
    nr_interval = ci.get("nucleation_ratio")
    reading, support = g.verdict_reading(), g.verdict_support or {}
    return {
        "family": g.family,
        "task": g.task,
        "condition": condition,
        "anchor": f"task-{slug}",
        "status": g.status,
        "problems": [p.message for p in g.problems],
        "seed_prompt": g.prompt_key(g.seed_index),
        "seed_support": list(g.seed_support),
        "seed_stability": g.seed_stability,
        "nucleation_ratio": json_number(g.values.get("nucleation_ratio")),
        "nucleation_ratio_ci": None
        if nr_interval is None
        else (json_number(nr_interval[0]), json_number(nr_interval[1])),
        "nucleation_ratio_outside": _outside(g.values.get("nucleation_ratio"), nr_interval),
        "liquidity_base": at("liquidity", g.roles.base),
        "liquidity_sft": at("liquidity", g.roles.sft),
        "probmass_sft": at("probmass", g.roles.sft),
        "base_stage": None if g.roles.base is None else g.stages[g.roles.base],
        "sft_stage": None if g.roles.sft is None else g.stages[g.roles.sft],
        "liquid": reading["liquid"],
        "nucleated": reading["nucleated"],
        "settled": list(reading["settled"].items()),
        "branching": [(stage, None if bf is None else bf.branching_factor,
                       None if bf is None else bf.estimate)
                      for stage, bf in g.branching.items()],
        "liquid_support": support.get("liquid"),
        "nucleated_support": support.get("nucleated"),
        "settled_support": support.get("settled", {}),
    }


def _cross_row(c: CrossResult) -> dict[str, Any]:
    rank = json_number(c.values.get("rank"))
    candidates = json_number(c.values.get("n_candidates"))
    return {
        "family_a": c.family_a,
        "family_b": c.family_b,
        "status": c.status,
        "seed_prompt_a": c.seed_prompt_a,
        "seed_prompt_b": c.seed_prompt_b,
        "rank": None if rank is None else f"{int(rank)}/{int(candidates)}",
        "mse": json_number(c.values.get("mse")),
        "predictive_ratio": json_number(c.values.get("predictive_ratio")),
        "same_seed_prompt": c.same_seed_prompt,
    }


def _outside(value: Any, interval: tuple | None) -> bool:
    """Whether a defined interval misses its own defined point estimate."""
    if value is None or interval is None:
        return False
    point, low, high = json_number(value), json_number(interval[0]), json_number(interval[1])
    return None not in (point, low, high) and not low <= point <= high


def _sweep_row(sweep: TemperatureSweep) -> dict[str, Any]:
    return {
        "family": sweep.family,
        "condition": sweep.label(),
        "temperatures": ", ".join(f"{t:g}" for t in sweep.temperatures),
        "reference": f"{sweep.reference_temperature:g}",
        "reference_seed_prompt": sweep.reference_seed_prompt,
        "sampled": sweep.reference_condition_key is not None,
        "points": sweep.points,
    }


_THRESHOLD_LABELS = (
    ("mode", "counts", "sampled counts or exact probabilities"),
    ("tau", "tau", "seed support: smallest top set of the seed's options with at least this mass"),
    ("liquid_threshold", "liquid", "liquid at base when L[base] >= this"),
    ("nucleation_ratio_threshold", "nucleated: NR", "nucleated needs NR < this"),
    ("probmass_threshold", "nucleated: ProbMass", "and ProbMass[sft] >= this (and L[sft] < L[base])"),
    ("settle_tolerance", "settled", "settled when ProbMass[s] >= ProbMass[sft] - this"),
    ("min_samples", "min samples", "prompts with fewer valid samples are excluded"),
    ("bootstrap", "bootstrap", "replicates for 95% intervals and seed stability (0: off)"),
    ("seed", "random seed", "of the bootstrap"),
    ("reference_temperature", "reference temperature",
     "temperature sweeps: ProbMass on the seed support chosen at this temperature"),
    ("trajectories", "trajectories", "checkpoint trajectories and change points computed"),
    ("verdict_support", "verdict support",
     "with a bootstrap, a verdict holding in fewer replicates than this share is uncertain"),
)


def _threshold_rows(thresholds: dict[str, Any]) -> list[tuple[str, Any, str]]:
    return [(label, thresholds[key], meaning) for key, label, meaning in _THRESHOLD_LABELS
            if key in thresholds]


def _unique_slugs(names: Sequence[str], reserved: set[str]) -> dict[str, str]:
    """File-name-safe slugs of task names, made unique (and distinct from ``reserved``)."""
    taken = set(reserved)
    out = {}
    for name in names:
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        base = re.sub(r"[^a-z0-9]+", "-", ascii_name.casefold()).strip("-") or "task"
        slug, n = base, 2
        while slug in taken:
            slug, n = f"{base}-{n}", n + 1
        taken.add(slug)
        out[name] = slug
    return out


# ----- HTML --------------------------------------------------------------------------------


def _render(**context: Any) -> str:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = _number
    environment.filters["verdict"] = _verdict
    environment.filters["percent"] = _percent
    environment.filters["setting"] = _setting
    return environment.get_template("report.html.j2").render(**context)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    value = float(value)
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _setting(value: Any) -> str:
    """A threshold table value: yes/no for a switch, — when unset (never Python's False)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _verdict(value: bool | str | None) -> str:
    return verdict_word(value)


# ----- captions (how to read each figure) ---------------------------------------------------

_BASE_CAPTION = (
    "Each row is the answer distribution of one base-model prompt (darker = more probable; "
    "blank rows were excluded for too few valid samples). A liquid base model shows many "
    "different rows: the wording of the prompt decides the answer. The outlined row is the "
    "seed p*, the base prompt whose distribution is closest (MSE) to the SFT stage's "
    "distribution."
)
_STAGES_CAPTION = (
    "One panel per stage, in registered stage order (rows: families). Bars are the stage "
    "distribution P̄[s] (the mean of its prompts' distributions), grey dots each prompt's own "
    "distribution, black outlines the seed S. At base the dots scatter (liquid); after SFT "
    "they gather on the bars and the bars follow the seed's outline (nucleation); later "
    "stages move mass inside the seed's options (settling)."
)
_TRAJECTORY_CAPTION = (
    "Each line is one family across its stages. Entropy (bits): solid the mean over prompts, "
    "dashed the entropy of the pooled P̄[s]; a big gap between the two at base means the "
    "prompts disagree. Liquidity: the mean Jensen-Shannon divergence (bits, 0 to 1) between "
    "pairs of prompts; the dotted line is the liquid threshold. MSE to seed: distance of P̄[s] "
    "from the seed S, which drops sharply at nucleation. ProbMass: the mass P̄[s] puts on the "
    "seed's support (solid) and on the support of the proxy seed P̄[sft] (dashed, usable where "
    "no base model was sampled); it stays high through settling stages."
)
_CI_NOTE = (
    " Vertical bars are bootstrap 95% intervals: plain percentile intervals of the "
    "replicates. A replicate adds a second round of the data's own sampling noise, so a "
    "statistic that noise biases is shifted the same way again: the interval of liquidity "
    "between nearly identical prompts or of an MSE near 0 can lie entirely above its point, "
    "that of the entropy of sparse counts below it. Read such a bar as the size of the "
    "sampling spread, not as bounds around the true value."
)
_AVERAGED_CAPTION = (
    "The same metrics as in each task's trajectory figure, averaged over the {n} tasks at "
    "each registered stage order (a stage missing for a task is left out of that average). "
    "The shaded band spans the lowest to the highest task; tasks with more options have "
    "higher entropy, so read the entropy band as the range of tasks, not as noise."
)
_CROSS_TASK_CAPTION = (
    "Does family A's seed predict family B's SFT distribution? Each cell takes A's seed S_A "
    "(row) and B's SFT distribution (column): the rank of S_A among A's base prompts ordered "
    "by MSE to B's SFT distribution (rank 1 = A's seed is the best of A's prompts) and the "
    "predictive ratio MSE(P̄_B[sft], S_A) / MSE(P̄_B[sft], P̄_A[base]). Blue cells (ratio "
    "below 1) mean the seed predicts better than A's base average; red cells worse."
)
_CHECKPOINT_CAPTION = (
    "Each row is one family, each panel one order parameter at every checkpoint in order "
    "(x: the checkpoint's step; shaded bands: its stages). Liquidity and pooled entropy fall "
    "and ProbMass on the seed's support rises where the model crystallizes; TV to previous is "
    "how far P̄ moved since the checkpoint before. The dashed red line is the best single "
    "change point (the break between two levels, drawn grey), with its bootstrap 95% interval "
    "as a red band when bootstrapped. ΔBIC compares the two-level step with a straight line: "
    "positive, an abrupt transition; negative, a steady drift. The seed is the stage "
    "metrics' (chosen with the final SFT checkpoint)."
)
_SWEEP_CAPTION = (
    "One row per family (and shared sampling condition), one line per stage, against the "
    "sampling temperature. A liquid base keeps a high pooled entropy and liquidity at every "
    "temperature; a crystallized stage has low liquidity, and its ProbMass on the seed "
    "support chosen at the reference temperature (dotted line; solid) shows whether heating "
    "melts it off that seed; dashed, the seed re-chosen at each temperature."
)
_CROSS_OVERALL_CAPTION = (
    "The cross-family matrix over all tasks: in how many tasks family A's seed ranks first "
    "among A's base prompts as a predictor of family B's SFT distribution, and the median "
    "predictive ratio over tasks (colour, log scale: blue below 1 = A's seed predicts B "
    "better than A's base average). Grey cells: the pair was never compared (no seed, or "
    "different base prompt sets)."
)
