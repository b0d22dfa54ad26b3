"""``catalog report``: the study's figures as one self-contained HTML file plus PNG files.

``build_report(engine, output_dir, ...)`` analyzes the selection (the same
:func:`analysis.crystallization.analyze` as ``catalog analyze``) and ``write_report(result,
output_dir)`` draws it: ``output_dir/report.html`` embeds every figure as a base64 PNG data
URI with inline CSS and no scripts, so it opens offline and can be mailed as one file; each
figure is also written to ``output_dir/figures/<name>.png`` under a stable, descriptive name
(``<task>-base-prompts``, ``<task>-stage-distributions``, ``<task>-trajectories``,
``<task>-cross-family``, ``all-tasks-trajectories``, ``all-tasks-cross-family``).

matplotlib is imported inside ``write_report`` (through :mod:`analysis.plots`), so importing
this module, and ``catalog --help``, stay fast.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from sqlalchemy import Engine

from analysis.crystallization import AnalysisOptions, analyze
from analysis.results import CrossResult, CrystallizationResult, GroupResult, json_number
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
) -> ReportSummary:
    """Analyze the selected families and tasks and write the report to ``output_dir``.

    Raises NotFound (from the analysis) when the store or the selection holds no runs.

    Example: ``build_report(engine, "catalog-report", tasks=["digit"], options=AnalysisOptions(bootstrap=200))``
    """
    result = analyze(engine, families=families, tasks=tasks, mode=mode, options=options)
    return write_report(result, output_dir)


def write_report(result: CrystallizationResult, output_dir: str | Path) -> ReportSummary:
    """Draw an analysis result: ``report.html`` and ``figures/*.png`` under ``output_dir``."""
    from analysis import plots

    groups = [g for g in result.groups if g.stages]
    if not groups:
        raise NotFound(
            "nothing to plot: the selection has no sampled stage for any (family, task); "
            "check `catalog analyze` and the --family/--task options"
        )
    with plots.style():
        return _draw(result, groups, Path(output_dir))


def _draw(result: CrystallizationResult, groups: list[GroupResult], output_dir: Path) -> ReportSummary:
    from analysis import plots

    figures_dir = output_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    families = list(dict.fromkeys(g.family for g in groups))
    task_names = list(dict.fromkeys(g.task for g in groups))
    colors = plots.family_colors(families)
    slugs = _unique_slugs(task_names, reserved={OVERALL})
    thresholds = result.thresholds
    written: list[Path] = []

    def save(figure, name: str, title: str, caption: str) -> ReportFigure:
        data = plots.png_bytes(figure)
        path = figures_dir / f"{name}.png"
        path.write_bytes(data)
        written.append(path)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return ReportFigure(name, path, title, caption, uri)

    overall_orders, overall_labels = plots.stage_axis(groups)
    overall = [
        save(
            plots.trajectories_figure(
                plots.averaged_trajectories(result, overall_orders), overall_labels, colors, thresholds
            ),
            f"{OVERALL}-trajectories",
            "Metric trajectories, averaged over tasks",
            _AVERAGED_CAPTION.format(n=len(task_names)),
        )
    ]
    if len(families) >= 2:
        overall.append(
            save(
                plots.cross_family_figure(result.cross, families, "all tasks"),
                f"{OVERALL}-cross-family",
                "Cross-family seed prediction, all tasks",
                _CROSS_OVERALL_CAPTION,
            )
        )

    sections = []
    for task in task_names:
        task_groups = [g for g in groups if g.task == task]
        slug = slugs[task]
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
        if len(task_groups) >= 2:
            cross = [c for c in result.cross if c.task == task]
            figures.append(
                save(
                    plots.cross_family_figure(cross, [g.family for g in task_groups], task, colorbar=False),
                    f"{slug}-cross-family",
                    "Cross-family seed prediction",
                    _CROSS_TASK_CAPTION,
                )
            )
        sections.append(
            {
                "task": task,
                "anchor": f"task-{slug}",
                "kind": task_groups[0].kind,
                "n_options": len(task_groups[0].options),
                "n_prompts": len(task_groups[0].prompt_keys),
                "rows": [_summary_row(g, slug) for g in task_groups],
                "cross": [_cross_row(c) for c in result.cross if c.task == task],
                "figures": figures,
            }
        )

    html = _render(
        title="Crystallization report",
        version=__version__,
        mode=thresholds.get("mode", "sampled"),
        thresholds=_threshold_rows(thresholds),
        families=families,
        tasks=task_names,
        summary=[row for section in sections for row in section["rows"]],
        overall=overall,
        sections=sections,
        single_family=len(families) < 2,
    )
    path = output_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return ReportSummary(path, written, families, task_names)


# ----- table rows --------------------------------------------------------------------------


def _summary_row(g: GroupResult, slug: str) -> dict[str, Any]:
    """One (family, task) line of the verdict table."""

    def at(name: str, index: int | None) -> float | None:
        if index is None or name not in g.values:
            return None
        return json_number(g.values[name][index])

    ci = g.ci or {}
    nr_interval = ci.get("nucleation_ratio")
    return {
        "family": g.family,
        "task": g.task,
        "anchor": f"task-{slug}",
        "status": g.status,
        "problems": list(g.problems),
        "seed_prompt": g.prompt_key(g.seed_index),
        "seed_support": list(g.seed_support),
        "seed_stability": g.seed_stability,
        "nucleation_ratio": json_number(g.values.get("nucleation_ratio")),
        "nucleation_ratio_ci": None
        if nr_interval is None
        else (json_number(nr_interval[0]), json_number(nr_interval[1])),
        "liquidity_base": at("liquidity", g.roles.base),
        "liquidity_sft": at("liquidity", g.roles.sft),
        "probmass_sft": at("probmass", g.roles.sft),
        "base_stage": None if g.roles.base is None else g.stages[g.roles.base],
        "sft_stage": None if g.roles.sft is None else g.stages[g.roles.sft],
        "liquid": g.verdict["liquid"],
        "nucleated": g.verdict["nucleated"],
        "settled": list(g.verdict["settled"].items()),
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


def _verdict(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "undefined"}[value]


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
_CI_NOTE = " Vertical bars are bootstrap 95% intervals."
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
_CROSS_OVERALL_CAPTION = (
    "The cross-family matrix over all tasks: in how many tasks family A's seed ranks first "
    "among A's base prompts as a predictor of family B's SFT distribution, and the median "
    "predictive ratio over tasks (colour, log scale: blue below 1 = A's seed predicts B "
    "better than A's base average). Grey cells: the pair was never compared (no seed, or "
    "different base prompt sets)."
)
