"""The report's figures, drawn with matplotlib from a :class:`CrystallizationResult`.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure registry, no GUI backend), so figures are garbage-collected like any object and
rendering is safe in workers and tests. This module imports matplotlib at import time:
import it lazily (``analysis.report`` does) so ``catalog --help`` stays fast.

Conventions shared by the figures:

- One colour per family, the same in every figure (``family_colors``).
- Stages are placed by their registered ``stage_order``; where families name the stage at
  one order differently (``dpo`` vs ``instruct``) the tick shows both names.
- Entropy and liquidity (a Jensen-Shannon divergence) are in bits; MSE and ProbMass are
  unitless (squared probability and probability).
- Open tasks can have hundreds of options: distributions show the ``MAX_OPTIONS`` options
  with the most probability anywhere in the task and lump the rest into "(other)".
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from analysis.groups import GroupResult
from analysis.results import CrossResult, GroupTrajectories
from analysis.sweeps import TemperatureSweep

DPI = 100
MAX_OPTIONS = 30
OTHER = "(other)"
_LABEL_CHARS = 18

# The report's look; applied with ``style()`` around drawing, never set globally.
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # A fixed title position: the automatic one measures every axes' decorations on
    # each save (a third of the drawing time).
    "axes.titley": 1.0,
    "axes.titlepad": 4.0,
}


def style():
    """A context in which figures are drawn (and saved) with the report's look."""
    return matplotlib.rc_context(STYLE)


def family_colors(families: Sequence[str]) -> dict[str, tuple]:
    """A stable colour per family (tab10, in the given order)."""
    palette = matplotlib.colormaps["tab10"].colors
    return {family: palette[i % len(palette)] for i, family in enumerate(families)}


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes, without the software tag (bytes depend only on the data)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


@dataclass(frozen=True)
class Margins:
    """Space around and between panels, in inches (text needs room that scales with it)."""

    left: float = 0.7
    right: float = 0.2
    bottom: float = 0.55
    top: float = 0.35
    wgap: float = 0.3
    hgap: float = 0.45


def panel_grid(
    nrows: int,
    ncols: int,
    panel: tuple[float, float],
    margins: Margins,
    **subplots: Any,
) -> tuple[Figure, np.ndarray]:
    """A figure sized to hold ``nrows x ncols`` panels of ``panel`` inches with fixed margins.

    Fixed margins instead of matplotlib's constrained layout: constrained layout measures
    every text twice per save, which made a 15-task report several times slower.
    """
    width = margins.left + ncols * panel[0] + (ncols - 1) * margins.wgap + margins.right
    height = margins.bottom + nrows * panel[1] + (nrows - 1) * margins.hgap + margins.top
    figure = Figure(figsize=(width, height), dpi=DPI)
    axes = figure.subplots(nrows, ncols, squeeze=False, **subplots)
    figure.subplots_adjust(
        left=margins.left / width,
        right=1 - margins.right / width,
        bottom=margins.bottom / height,
        top=1 - margins.top / height,
        wspace=margins.wgap / panel[0],
        hspace=margins.hgap / panel[1],
    )
    return figure, axes


def _inches(figure: Figure, left: float, bottom: float, width: float, height: float) -> list[float]:
    """A rectangle given in inches from the figure's lower left, as figure fractions."""
    w, h = figure.get_size_inches()
    return [left / w, bottom / h, width / w, height / h]


# ----- answer distributions --------------------------------------------------------------


def _shown_options(groups: Sequence[GroupResult]) -> tuple[list[str], np.ndarray | None]:
    """Options to draw (at most MAX_OPTIONS) and, if some are lumped, their column mask."""
    options = groups[0].options
    if len(options) <= MAX_OPTIONS:
        return list(options), None
    peak = np.zeros(len(options))
    for g in groups:
        if g.distributions.size:
            peak = np.maximum(peak, g.distributions.max(axis=(0, 1)))
    keep = np.zeros(len(options), bool)
    keep[np.sort(np.argsort(-peak, kind="stable")[: MAX_OPTIONS - 1])] = True
    return [o for o, k in zip(options, keep) if k] + [OTHER], keep


def _lump(p: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """Distributions over the shown options: the lumped ones summed into the last column."""
    if keep is None:
        return p
    return np.concatenate([p[..., keep], p[..., ~keep].sum(axis=-1, keepdims=True)], axis=-1)


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def _option_ticks(ax, options: list[str]) -> None:
    ax.set_xticks(range(len(options)))
    ax.set_xticklabels([_short(o) for o in options], rotation=90 if _rotated(options) else 0,
                       fontsize=7 if _rotated(options) else 8)


def _rotated(labels: Sequence[str]) -> bool:
    return len(labels) > 10 or max(map(len, labels), default=0) > 3


def _label_inches(labels: Sequence[str], rotated: bool = True) -> float:
    """Room that tick labels need across their axis (7-8 pt text is about 0.075 in a char)."""
    if not rotated:
        return 0.2
    return 0.08 + 0.07 * max((len(_short(label)) for label in labels), default=1)


def base_prompts_figure(groups: Sequence[GroupResult], colors: dict[str, tuple]) -> Figure:
    """One task: a heatmap per family of every base prompt's distribution (prompts x options).

    The seed prompt's row is outlined; prompts excluded from the base stage are blank.
    """
    options, keep = _shown_options(groups)
    prompt_keys = groups[0].prompt_keys
    margins = Margins(
        left=0.45 + _label_inches(prompt_keys),
        right=1.1,
        bottom=0.45 + _label_inches(options, _rotated(options)),
        wgap=0.45,
    )
    panel = (float(np.clip(0.24 * len(options) + 0.3, 1.8, 4.5)), 0.2 * len(prompt_keys) + 0.3)
    figure, axes = panel_grid(1, len(groups), panel, margins)
    image = None
    for i, (ax, g) in enumerate(zip(axes[0], groups)):
        base = g.roles.base
        ax.set_title(f"{_short(g.family)}: base" + ("" if base is None else f" ({g.stages[base]})"),
                     color=colors[g.family])
        if base is None:
            ax.text(0.5, 0.5, "no base stage sampled", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        p = _lump(g.distributions[base], keep)
        shown = np.where(g.usable[base][:, None], p, np.nan)
        image = ax.imshow(shown, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if i == 0:  # the prompt axis is the same in every panel
            ax.set_yticks(range(len(prompt_keys)))
            ax.set_yticklabels([_short(k) for k in prompt_keys], fontsize=7)
        else:
            ax.set_yticks([])
        _option_ticks(ax, options)
        ax.set_xlabel("answer option")
        ax.spines[:].set_visible(False)
        if g.seed_index >= 0:
            ax.add_patch(Rectangle((-0.5, g.seed_index - 0.5), len(options), 1, fill=False,
                                   edgecolor="crimson", linewidth=2, clip_on=False))
            ax.annotate("seed", (len(options) - 0.5, g.seed_index), xytext=(3, 0),
                        textcoords="offset points", va="center", color="crimson", fontsize=7,
                        annotation_clip=False)
    axes[0, 0].set_ylabel("base prompt")
    if image is not None:
        width, _ = figure.get_size_inches()
        cax = figure.add_axes(_inches(figure, width - 0.75, margins.bottom, 0.15, panel[1]))
        figure.colorbar(image, cax=cax, label="probability")
    return figure


def stage_distributions_figure(groups: Sequence[GroupResult], colors: dict[str, tuple]) -> Figure:
    """One task: per family (rows) and stage (columns), the stage distribution Pbar as bars,
    each prompt's distribution as grey dots, and the seed distribution S as black outlines."""
    options, keep = _shown_options(groups)
    n_cols = max(len(g.stages) for g in groups)
    margins = Margins(
        left=0.6,
        bottom=0.4 + _label_inches(options, _rotated(options)),
        top=0.6,
        wgap=0.15,
        hgap=0.35,
    )
    panel = (float(np.clip(0.2 * len(options) + 0.4, 1.6, 3.2)), 1.5)
    # Panels share their scales by hand, not with sharex/sharey: shared axes still draw
    # every hidden tick, which was most of the drawing time.
    figure, axes = panel_grid(len(groups), n_cols, panel, margins)
    edges = np.arange(len(options) + 1) - 0.5
    x = np.arange(len(options))
    top = 0.0
    for row, g in zip(axes, groups):
        seed = _lump(g.distributions[g.roles.base, g.seed_index], keep) if g.seed_index >= 0 else None
        for col, ax in enumerate(row):
            if col >= len(g.stages):
                ax.set_axis_off()
                continue
            role = g.role(col)
            ax.set_title(f"{_short(g.family)}: {g.stages[col]}" + (f" ({role})" if role != "other" else ""),
                         color=colors[g.family])
            if not g.usable[col].any():
                ax.text(0.5, 0.5, "no usable prompt", ha="center", va="center", transform=ax.transAxes)
                continue
            prompts = _lump(g.distributions[col][g.usable[col]], keep)
            ax.stairs(prompts.mean(axis=0), edges, fill=True, color=colors[g.family], alpha=0.75,
                      label="stage distribution P̄[s]")
            ax.plot(np.tile(x, len(prompts)), prompts.ravel(), ".", color="0.3", markersize=2.5,
                    alpha=0.6, label="one prompt's distribution")
            if seed is not None:
                ax.stairs(seed, edges, color="black", linewidth=0.9, label="seed S (this family)")
                top = max(top, float(seed.max()))
            top = max(top, float(prompts.max()))
    top = min(1.0, top * 1.08) or 1.0
    last_row = {col: max(r for r, g in enumerate(groups) if col < len(g.stages)) for col in range(n_cols)}
    for r, row in enumerate(axes):
        for col, ax in enumerate(row):
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(0, top)
            if col == 0:
                ax.yaxis.set_major_locator(MaxNLocator(4))
                ax.set_ylabel("probability")
            else:
                ax.set_yticks([])
            if r == last_row[col]:
                _option_ticks(ax, options)
            else:
                ax.set_xticks([])
    axes[last_row[0], 0].set_xlabel("answer option")
    handles, labels = next(
        (h for h in (ax.get_legend_handles_labels() for ax in axes.flat) if h[0]), ([], [])
    )
    if handles:
        legend = figure.legend(handles, labels, loc="upper left", ncols=3, frameon=False,
                               bbox_to_anchor=(margins.left / figure.get_size_inches()[0], 1.0))
        _widen_for(figure, legend, margins)
    return figure


def _widen_for(figure: Figure, legend: Any, margins: Margins, pad: float = 0.1) -> None:
    """Widen the figure (panels keep their size) until the legend, anchored at the left
    margin, ends inside it: a one-row legend over few narrow panels overran the right edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    width, height = figure.get_size_inches()
    renderer = FigureCanvasAgg(figure).get_renderer()
    legend_inches = legend.get_window_extent(renderer).width / figure.dpi
    needed = margins.left + legend_inches + pad
    if needed <= width:
        return
    panels = width - margins.left - margins.right
    figure.set_size_inches(needed, height)
    figure.subplots_adjust(left=margins.left / needed, right=(margins.left + panels) / needed)
    legend.set_bbox_to_anchor((margins.left / needed, 1.0), transform=figure.transFigure)


# ----- metric trajectories ---------------------------------------------------------------

# (metric, dashed companion or None, panel title, y label)
_PANELS = (
    ("entropy_mean_prompt", "entropy_pooled", "Entropy", "entropy (bits)"),
    ("liquidity", None, "Liquidity L", "mean pairwise JSD (bits)"),
    ("mse_to_seed", None, "MSE to seed", "MSE(P̄[s], S)"),
    ("probmass", "probmass_proxy", "ProbMass", "mass on seed support"),
)
_DASHED_MEANING = {
    "entropy_mean_prompt": ("mean over prompts", "pooled H(P̄)"),
    "probmass": ("seed S", "proxy seed P̄[sft]"),
}


@dataclass
class StageTrajectory:
    """One family's per-stage values on a shared x axis (stage positions), drawn as a line
    (not a checkpoint trajectory: that is :class:`analysis.trajectories.Trajectory`).

    ``ci``: bootstrap 95% interval bounds per metric (drawn as error bars); ``band``: a
    range drawn as a shaded area (the spread over tasks in the averaged figure).
    """

    family: str
    x: np.ndarray
    values: dict[str, np.ndarray]
    ci: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    band: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def stage_axis(groups: Sequence[GroupResult]) -> tuple[list[int], list[str]]:
    """Shared stage positions: the registered stage orders, labelled by their stage names."""
    names: dict[int, list[str]] = {}
    for g in groups:
        for stage, order in zip(g.stages, g.stage_orders):
            if stage not in names.setdefault(int(order), []):
                names[int(order)].append(stage)
    orders = sorted(names)
    return orders, ["/".join(names[o]) for o in orders]


def task_trajectories(
    groups: Sequence[GroupResult], orders: list[int]
) -> list[StageTrajectory]:
    """Each family's metrics on one task, with bootstrap intervals where computed."""
    out = []
    for g in groups:
        if not g.stages:
            continue
        x = np.array([orders.index(int(o)) for o in g.stage_orders])
        names = [n for panel in _PANELS for n in panel[:2] if n and n in g.values]
        ci = {n: g.ci[n] for n in names if g.ci and n in g.ci}
        values = {n: np.asarray(g.values[n], float) for n in names}
        out.append(StageTrajectory(g.family, x, values, ci))
    return out


def averaged_trajectories(
    groups: Sequence[GroupResult], orders: list[int]
) -> list[StageTrajectory]:
    """Each family's metrics averaged over tasks at each stage order; band = min..max over
    tasks. ``groups``: the groups of one condition."""
    out = []
    for family in dict.fromkeys(g.family for g in groups):
        sampled = [g for g in groups if g.family == family and g.stages]
        if not sampled:
            continue
        names = [n for panel in _PANELS for n in panel[:2] if n]
        table = {n: np.full((len(sampled), len(orders)), np.nan) for n in names}
        for row, g in enumerate(sampled):
            columns = [orders.index(int(o)) for o in g.stage_orders]
            for n in names:
                if n in g.values:
                    table[n][row, columns] = g.values[n]
        present = ~np.all(np.isnan(table[names[0]]), axis=0)
        x = np.flatnonzero(present)
        with np.errstate(all="ignore"):
            values = {n: _nan_stat(np.nanmean, t[:, present]) for n, t in table.items()}
            band = {
                n: (_nan_stat(np.nanmin, t[:, present]), _nan_stat(np.nanmax, t[:, present]))
                for n, t in table.items()
            }
        out.append(StageTrajectory(family, x, values, band=band))
    return out


def _nan_stat(function, table: np.ndarray) -> np.ndarray:
    """A column statistic over the finite values; NaN for a column with none (no warning)."""
    finite = np.isfinite(table)
    filled = np.where(finite, table, np.nan)
    result = np.full(table.shape[1], np.nan)
    columns = finite.any(axis=0)
    if columns.any():
        result[columns] = function(filled[:, columns], axis=0)
    return result


def trajectories_figure(
    trajectories: Sequence[StageTrajectory],
    stage_labels: Sequence[str],
    colors: dict[str, tuple],
    thresholds: dict,
) -> Figure:
    """Entropy, liquidity, MSE to the seed and ProbMass (seed and proxy seed) across stages."""
    rotated = any(len(label) > 6 for label in stage_labels) and len(stage_labels) > 3
    margins = Margins(
        left=0.65, right=1.5, bottom=0.45 + _label_inches(stage_labels, rotated), wgap=0.75
    )
    figure, axes = panel_grid(1, len(_PANELS), (2.5, 2.1), margins)
    axes = axes[0]
    offsets = _dodge(len(trajectories))
    for ax, (name, dashed, title, ylabel) in zip(axes, _PANELS):
        for t, offset in zip(trajectories, offsets):
            color = colors[t.family]
            for metric, style in ((name, "-"), (dashed, "--")):
                if metric is None or metric not in t.values:
                    continue
                y = t.values[metric]
                ax.plot(t.x + offset, y, style, marker="o", markersize=3.5, color=color,
                        label=t.family if style == "-" else None)
                if metric in t.ci:
                    low, high = t.ci[metric]
                    ax.vlines(t.x + offset, low, high, color=color, linewidth=1.2, alpha=0.8)
                if metric in t.band and style == "-":
                    low, high = t.band[metric]
                    ax.fill_between(t.x + offset, low, high, color=color, alpha=0.12, linewidth=0)
        if name == "liquidity":
            _threshold(ax, thresholds.get("liquid_threshold"), "liquid threshold")
        if name == "probmass":
            _threshold(ax, thresholds.get("probmass_threshold"), "nucleation threshold")
            ax.set_ylim(-0.02, 1.05)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_xticks(range(len(stage_labels)))
        ax.set_xticklabels([_short(s) for s in stage_labels], rotation=30 if rotated else 0,
                           ha="right" if rotated else "center")
        ax.set_xlabel("stage")
        ax.set_xlim(-0.4, len(stage_labels) - 0.6)
        if name in _DASHED_MEANING:
            solid, dash = _DASHED_MEANING[name]
            ax.plot([], [], "-", color="0.3", label=solid)
            ax.plot([], [], "--", color="0.3", label=dash)
            ax.legend(handles=ax.get_legend_handles_labels()[0][-2:], frameon=False, loc="best")
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="upper right", frameon=False, title="family",
                      bbox_to_anchor=(1.0, 1 - margins.top / figure.get_size_inches()[1]))
    return figure


def _dodge(n: int) -> np.ndarray:
    """Small horizontal offsets so error bars of several families do not overlap."""
    return (np.arange(n) - (n - 1) / 2) * (0.06 if n > 1 else 0.0)


def _threshold(ax, value, label: str) -> None:
    if value is not None:
        ax.axhline(value, color="0.5", linestyle=":", linewidth=1)
        ax.annotate(label, (1, value), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                    textcoords="offset points", fontsize=7, color="0.4", ha="right")


# ----- checkpoint trajectories -------------------------------------------------------------

# (series, panel title, y label); the series of analysis.trajectories.TRAJECTORY_METRICS.
_CHECKPOINT_PANELS = (
    ("liquidity", "Liquidity L", "mean pairwise JSD (bits)"),
    ("entropy_pooled", "Pooled entropy", "H(P̄) (bits)"),
    ("mse_to_seed", "MSE to seed", "MSE(P̄, S)"),
    ("probmass", "ProbMass", "mass on seed support"),
    ("tv_to_previous", "TV to previous", "TV(P̄[c], P̄[c-1])"),
)
_BAND_COLORS = ("0.94", "white")


def checkpoint_figure(groups: Sequence[GroupTrajectories], colors: dict[str, tuple]) -> Figure:
    """One task and condition: per family (rows) each series against its checkpoints.

    Stages are shaded bands, labelled at the top; the change point k* is a dashed vertical
    line between the last point of the old level and the first of the new one, with the
    two levels drawn as grey segments and, when bootstrapped, the 95% interval of the break
    as a red band. TV to the previous checkpoint is drawn at the later checkpoint.
    """
    widest = max(len(g.series[0].steps) for g in groups if g.series)
    panel = (float(np.clip(0.09 * widest + 1.2, 2.0, 4.0)), 1.7)
    margins = Margins(left=0.7, right=0.2, bottom=0.5, top=0.5, wgap=0.6, hgap=0.85)
    figure, axes = panel_grid(len(groups), len(_CHECKPOINT_PANELS), panel, margins)
    for row, g in zip(axes, groups):
        series = {t.metric: t for t in g.series}
        checkpoints = series["liquidity"].steps
        for ax, (metric, title, ylabel) in zip(row, _CHECKPOINT_PANELS):
            _stage_bands(ax, checkpoints)
            ax.set_xlim(-0.5, len(checkpoints) - 0.5)
            ax.set_ylabel(ylabel, fontsize=7)
            t = series.get(metric)
            if t is None:
                ax.set_title(f"{_short(g.family)}: {title}", color=colors[g.family])
                ax.text(0.5, 0.5, "no seed", ha="center", va="center", transform=ax.transAxes)
                continue
            first = len(checkpoints) - len(t.values)  # TV starts at c_1
            x = np.arange(len(t.values)) + first
            ax.plot(x, np.asarray(t.values, float), "-", marker="o", markersize=2.5,
                    color=colors[g.family], linewidth=1.2)
            cp = t.change_point
            verdict = ""
            if cp is not None:
                verdict = f"\n{'transition' if cp.transition else 'drift'}, ΔBIC {cp.delta_bic:.1f}"
                split = cp.index + first - 0.5
                ax.axvline(split, color="crimson", linestyle="--", linewidth=1)
                ax.hlines([cp.before, cp.after], [first - 0.3, split], [split, x[-1] + 0.3],
                          colors="0.45", linewidth=1)
                if cp.ci is not None:
                    ax.axvspan(cp.ci[0] + first - 0.5, cp.ci[1] + first - 0.5 + 0.02,
                               color="crimson", alpha=0.15, linewidth=0)
            ax.set_title(f"{_short(g.family)}: {title}{verdict}", color=colors[g.family])
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.set_xlabel("checkpoint", fontsize=7)
    return figure


def _stage_bands(ax, checkpoints: Sequence[tuple[str, int | None]]) -> None:
    """Alternating shaded bands, one per stage, named on top; ticks at a few steps."""
    starts = [i for i, (stage, _) in enumerate(checkpoints)
              if i == 0 or checkpoints[i - 1][0] != stage]
    ends = [*starts[1:], len(checkpoints)]
    for n, (start, end) in enumerate(zip(starts, ends)):
        ax.axvspan(start - 0.5, end - 0.5, color=_BAND_COLORS[n % 2], linewidth=0, zorder=0)
        ax.annotate(_short(checkpoints[start][0]), ((start + end - 1) / 2, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(0, -2), textcoords="offset points",
                    ha="center", va="top", fontsize=6, color="0.35")
    every = max(1, int(np.ceil(len(checkpoints) / 6)))
    ticks = list(range(0, len(checkpoints), every))
    ax.set_xticks(ticks)
    ax.set_xticklabels([checkpoints[i][0] if checkpoints[i][1] is None else str(checkpoints[i][1])
                        for i in ticks], fontsize=6)


# ----- temperature sweeps ------------------------------------------------------------------

_SWEEP_PANELS = (
    ("entropy_pooled", "entropy_mean_prompt", "Entropy", "entropy (bits)"),
    ("liquidity", None, "Liquidity L", "mean pairwise JSD (bits)"),
    ("probmass_reference_seed", "probmass_own_seed", "ProbMass", "mass on seed support"),
)
_SWEEP_DASHED = {
    "entropy_pooled": ("pooled H(P̄)", "mean over prompts"),
    "probmass_reference_seed": ("seed at reference T", "seed at each T"),
}


def temperature_sweep_figure(sweeps: Sequence[TemperatureSweep]) -> Figure:
    """One task: per sweep (rows: family and shared condition) entropy, liquidity and
    ProbMass against temperature, one line per stage (dashed: the companion series)."""
    margins = Margins(left=0.65, right=1.3, bottom=0.5, top=0.45, wgap=0.7, hgap=0.65)
    figure, axes = panel_grid(len(sweeps), len(_SWEEP_PANELS), (2.5, 1.9), margins)
    stages = list(dict.fromkeys(stage for sweep in sweeps for stage in sweep.stages))
    palette = matplotlib.colormaps["Dark2"].colors
    stage_color = {stage: palette[i % len(palette)] for i, stage in enumerate(stages)}
    for row, sweep in zip(axes, sweeps):
        for ax, (name, dashed, title, ylabel) in zip(row, _SWEEP_PANELS):
            for stage in sweep.stages:
                for metric, style in ((name, "-"), (dashed, "--")):
                    if metric is None:
                        continue
                    x, y = sweep.series(stage, metric)
                    y = np.array([np.nan if v is None else v for v in y], float)
                    ax.plot(x, y, style, marker="o", markersize=3, color=stage_color[stage],
                            label=stage if style == "-" else None)
            ax.axvline(sweep.reference_temperature, color="0.6", linestyle=":", linewidth=1)
            ax.set_title(f"{_short(sweep.family)}: {title}")
            ax.set_ylabel(ylabel)
            ax.set_xlabel("temperature")
            ax.yaxis.set_major_locator(MaxNLocator(5))
            if name == "probmass_reference_seed":
                ax.set_ylim(-0.02, 1.05)
            if name in _SWEEP_DASHED:
                solid, dash = _SWEEP_DASHED[name]
                ax.plot([], [], "-", color="0.3", label=solid)
                ax.plot([], [], "--", color="0.3", label=dash)
                ax.legend(handles=ax.get_legend_handles_labels()[0][-2:], frameon=False,
                          loc="best", fontsize=7)
    handles = [Line2D([], [], color=stage_color[s], marker="o", markersize=3)
               for s in stages]
    figure.legend(handles, stages, loc="upper right", frameon=False, title="stage",
                  bbox_to_anchor=(1.0, 1 - margins.top / figure.get_size_inches()[1]))
    return figure


# ----- cross-family seed prediction -------------------------------------------------------


def cross_family_figure(
    cross: Sequence[CrossResult], families: Sequence[str], title: str, colorbar: bool = True
) -> Figure:
    """Families x families: row A's seed predicting column B's SFT distribution.

    One task: the cell shows A's seed's rank among A's base prompts (by MSE to B's SFT
    mean, 1 = best) and the predictive ratio. Several tasks: the number of tasks where the
    rank is 1 and the median predictive ratio. Colour: the (median) predictive ratio on a
    log scale, blue below 1 (A's seed predicts B better than A's base average).
    """
    n = len(families)
    ratio = np.full((n, n), np.nan)
    text = [["" for _ in range(n)] for _ in range(n)]
    by_pair: dict[tuple[str, str], list[CrossResult]] = {}
    for c in cross:
        by_pair.setdefault((c.family_a, c.family_b), []).append(c)
    for i, a in enumerate(families):
        for j, b in enumerate(families):
            if i == j:
                text[i][j] = "same\nfamily"
                continue
            done = [c for c in by_pair.get((a, b), []) if c.status == "ok" and c.values]
            if not done:
                text[i][j] = "not\ncompared"
                continue
            ratios = np.array([c.values["predictive_ratio"] for c in done], float)
            finite = ratios[np.isfinite(ratios) & (ratios > 0)]
            ratio[i, j] = np.median(finite) if finite.size else np.nan
            if len(done) == 1 and len(by_pair[(a, b)]) == 1:
                c = done[0]
                text[i][j] = (f"rank {_fmt(c.values['rank'])}/{_fmt(c.values['n_candidates'])}\n"
                              f"ratio {_fmt(c.values['predictive_ratio'])}")
            else:
                firsts = sum(c.values["rank"] == 1 for c in done)
                text[i][j] = (f"rank 1 in {firsts}/{len(done)}\n"
                              f"median ratio {_fmt(ratio[i, j])}")
    margins = Margins(
        left=0.5 + _label_inches(families),
        right=1.3 if colorbar else 0.2,
        bottom=0.55 + 0.7 * _label_inches(families),
        top=0.4,
    )
    figure, axes = panel_grid(1, 1, (1.15 * n, 1.0 * n), margins)
    ax = axes[0, 0]
    finite = ratio[np.isfinite(ratio) & (ratio > 0)]
    span = max(2.0, float(np.max(np.abs(np.log10(finite)))) * 1.05) if finite.size else 2.0
    image = ax.imshow(np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.nan), cmap="RdBu_r",
                      norm=LogNorm(10 ** -span, 10 ** span), interpolation="nearest",
                      aspect="auto")
    if colorbar:
        width, _ = figure.get_size_inches()
        cax = figure.add_axes(_inches(figure, width - 1.1, margins.bottom, 0.15, 1.0 * n))
        figure.colorbar(image, cax=cax, label="predictive ratio")
    ax.set_facecolor("0.93")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n))
    ax.set_xticklabels([_short(f) for f in families], rotation=30, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels([_short(f) for f in families])
    ax.set_xlabel("family B (SFT distribution predicted)")
    ax.set_ylabel("family A (seed used)")
    ax.spines[:].set_visible(False)
    ax.set_title(title)
    return figure


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2g}" if abs(value) < 0.01 else f"{value:.2f}"
