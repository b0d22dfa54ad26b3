"""What the explorer's pages show, read from the store through a read-only engine, with the
analysis cached per store state.

The analysis of the whole store (every family, task and condition of one mode, and
bootstrap size) and the figures drawn from it are kept in a small cache keyed on the *store
state*: a few aggregates of the ``runs`` table (how many, the highest id, the latest
finish, how many done, stale and invalid) that change whenever a run is added, finishes,
fails, is renormalized or is deleted, and a digest of the task definitions and the models'
stages. A page costs one cheap state query when nothing changed; the first page after a
change recomputes. The queue and the samples are read live.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, case, func, literal_column, select, table

from catalog.errors import NotFound
from catalog.schema import Completion, Family, Model, OptionCount, Prompt, Run, Task

# Distinct texts shown on a samples page (the most frequent first); the page says how many more.
MOST_TEXTS = 500
_CACHED_ITEMS = 64


class StateCache:
    """Values computed from the store, kept while its state is unchanged (least recently
    used first out). One computation at a time: concurrent requests for the same page wait
    for the first instead of repeating it."""

    def __init__(self, engine: Engine, size: int = _CACHED_ITEMS) -> None:
        self.engine = engine
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()  # figures compute from the cached analysis
        self._local = threading.local()

    def state(self) -> tuple:
        """The store state: changes with any added, finished, failed, renormalized or
        deleted run, and with any change of a task's definition or of the models' stages
        (both small tables, read whole: a renormalization after a task update can leave
        every runs aggregate as it was before the update)."""
        runs = select(
            func.count(), func.max(Run.id), func.max(Run.finished_at),
            func.sum(case((Run.status == "done", 1), else_=0)),
            func.sum(case((Run.stale, 1), else_=0)), func.sum(Run.n_invalid),
            func.max(Run.normalizer_version),
        )
        definitions = (
            select(Task.name, Task.normalizer_version, Task.options, Task.spec).order_by(Task.id),
            select(Model.id, Model.name, Model.family_id, Model.stage, Model.stage_order,
                   Model.step).order_by(Model.id),
        )
        with self.engine.connect() as conn:
            state = tuple(conn.execute(runs).one())
            digest = hashlib.sha256()
            for query in definitions:
                for row in conn.execute(query):
                    digest.update(repr(tuple(row)).encode())
        return (*state, digest.hexdigest())

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read the store state once for everything this thread gets from the cache inside
        (one page: one state query, and one state for all its parts)."""
        self._local.state = self.state()
        try:
            yield
        finally:
            self._local.state = None

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        state = getattr(self._local, "state", None)
        full_key = (self.state() if state is None else state, key)
        with self._lock:
            if full_key in self._items:
                self._items.move_to_end(full_key)
                return self._items[full_key]
            value = compute()
            self._items[full_key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value


@dataclass
class Explorer:
    """The pages' data. ``engine`` must be read-only (:func:`catalog.views.read_only_engine`)."""

    engine: Engine

    def __post_init__(self) -> None:
        self.cache = StateCache(self.engine)

    # ----- analysis (cached) ------------------------------------------------------------

    def analysis(self, mode: str, bootstrap: int = 0):
        """The analysis of every family, task and condition of ``mode`` (with ``bootstrap``
        replicates for the verdicts' support; 0: none), or None when the store holds no done
        run of that mode."""
        return self.cache.get(("analysis", mode, bootstrap),
                              lambda: self._analyze(mode, bootstrap))

    def _analyze(self, mode: str, bootstrap: int):
        from analysis.crystallization import AnalysisOptions, analyze

        try:
            return analyze(self.engine, mode=mode, options=AnalysisOptions(bootstrap=bootstrap))
        except NotFound:
            return None

    def run_counts(self, mode: str) -> dict[tuple[str, str, str], dict[str, int]]:
        """{(family, task, condition_key): runs, samples, invalid} of the done runs."""
        return self.cache.get(("counts", mode), lambda: self._run_counts(mode))

    def _run_counts(self, mode: str) -> dict[tuple[str, str, str], dict[str, int]]:
        c = literal_column
        query = (
            select(c("family"), c("task"), c("condition_key"), func.count(),
                   func.sum(func.coalesce(c("n_valid"), 0)),
                   func.sum(func.coalesce(c("n_invalid"), 0)))
            .select_from(table("v_runs"))
            .where(c("mode") == mode)
            .group_by(c("family"), c("task"), c("condition_key"))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {(f, t, k): {"runs": int(n), "samples": int(valid or 0) + int(invalid or 0),
                            "invalid": int(invalid or 0)}
                for f, t, k, n, valid, invalid in rows}

    def model_names(self) -> dict[tuple[str, str, int | None], str]:
        """{(family, stage, step): model name}."""
        return self.cache.get("models", self._model_names)

    def _model_names(self) -> dict[tuple[str, str, int | None], str]:
        query = select(Family.name, Model.stage, Model.step, Model.name).join(
            Family, Family.id == Model.family_id)
        with self.engine.connect() as conn:
            return {(f, s, step): m for f, s, step, m in conn.execute(query)}

    def figures(self, mode: str, task: str, condition_key: str,
                families: tuple[str, ...], bootstrap: int = 0) -> list[dict[str, str]]:
        """The report's figures for one task and condition (and these families; all when
        empty), as PNG data URIs (as in the report: SVG of a big task's hundred thousand
        dots took several times longer to write, and weighed more)."""
        key = ("figures", mode, task, condition_key, families, bootstrap)
        return self.cache.get(key, lambda: self._figures(mode, task, condition_key, families,
                                                         bootstrap))

    def _figures(self, mode: str, task: str, condition_key: str,
                 families: tuple[str, ...], bootstrap: int) -> list[dict[str, str]]:
        from analysis import plots

        result = self.analysis(mode, bootstrap)
        groups = task_groups(result, task, condition_key, families)
        if not groups:
            return []
        colors = plots.family_colors(list(dict.fromkeys(g.family for g in result.groups)))
        names = [g.family for g in groups]
        orders, labels = plots.stage_axis(groups)
        drawn = []
        with plots.style():
            drawn.append(("Base prompts: the liquid",
                          plots.base_prompts_figure(groups, colors)))
            drawn.append(("Answer distributions by stage",
                          plots.stage_distributions_figure(groups, colors)))
            drawn.append(("Metric trajectories across stages", plots.trajectories_figure(
                plots.task_trajectories(groups, orders), labels, colors, result.thresholds)))
            if len(groups) >= 2:
                cross = [c for c in result.cross if c.task == task
                         and c.condition_key == condition_key
                         and c.family_a in names and c.family_b in names]
                drawn.append(("Cross-family seed prediction",
                              plots.cross_family_figure(cross, names, task, colorbar=False)))
            series = [t for t in result.trajectories if t.task == task
                      and t.condition_key == condition_key and t.family in names and t.series]
            if series:
                drawn.append(("Order parameters across checkpoints",
                              plots.checkpoint_figure(series, colors)))
            sweeps = [s for s in result.sweeps if s.task == task and s.family in names]
            if sweeps:
                drawn.append(("Temperature sweep (every condition of the task)",
                              plots.temperature_sweep_figure(sweeps)))
            return [{"title": title, "uri": "data:image/png;base64,"
                     + base64.b64encode(plots.png_bytes(figure)).decode("ascii")}
                    for title, figure in drawn]

    # ----- live reads -------------------------------------------------------------------

    def samples(self, model: str, task: str, prompt: str, condition_key: str, *,
                option: str | None = None, invalid: str = "any") -> dict[str, Any]:
        """The distinct raw completions of one (model, task, prompt, condition) pooled over
        its done runs, with their counts and the option each normalized to; the runs and
        their provenance. ``invalid``: "any", "only" (invalid texts) or "none" (valid).
        Raises NotFound when no run matches."""
        unit = (
            select(Run.__table__)
            .join(Model, Model.id == Run.model_id).join(Task, Task.id == Run.task_id)
            .join(Prompt, Prompt.id == Run.prompt_id)
            .where(Model.name == model, Task.name == task, Prompt.key == prompt,
                   Run.condition_key == condition_key)
            .order_by(Run.id)
        )
        with self.engine.connect() as conn:
            runs = [dict(row._mapping) for row in conn.execute(unit)]
            if not runs:
                raise NotFound(f"no run of model {model!r}, task {task!r}, prompt {prompt!r} "
                               "in this condition")
            template = conn.execute(
                select(Prompt.template).join(Task, Task.id == Prompt.task_id)
                .where(Task.name == task, Prompt.key == prompt)).scalar()
            done = [r["id"] for r in runs if r["status"] == "done"]
            texts = select(Completion.text, Completion.option, Completion.invalid_reason,
                           func.sum(Completion.count).label("n")).where(
                Completion.run_id.in_(done))
            by_option = conn.execute(
                select(Completion.option, Completion.invalid_reason, func.sum(Completion.count))
                .where(Completion.run_id.in_(done))
                .group_by(Completion.option, Completion.invalid_reason)).all()
            if option is not None:
                texts = texts.where(Completion.option == option)
            if invalid == "only":
                texts = texts.where(Completion.invalid_reason.is_not(None))
            elif invalid == "none":
                texts = texts.where(Completion.invalid_reason.is_(None))
            texts = texts.group_by(Completion.text, Completion.option, Completion.invalid_reason)
            total_distinct = conn.execute(
                select(func.count()).select_from(texts.subquery())).scalar()
            shown = conn.execute(
                texts.order_by(func.sum(Completion.count).desc(), Completion.text)
                .limit(MOST_TEXTS)).all()
            counted = conn.execute(
                select(OptionCount.option, func.sum(OptionCount.count))
                .where(OptionCount.run_id.in_(done)).group_by(OptionCount.option)
                .order_by(func.sum(OptionCount.count).desc(), OptionCount.option)).all()
        options: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for opt, reason, n in by_option:
            if reason is None and opt is not None:
                options[opt] = options.get(opt, 0) + int(n)
            else:
                reasons[reason or "invalid"] = reasons.get(reason or "invalid", 0) + int(n)
        return {
            "runs": runs,
            "template": template,
            "rendered": list(dict.fromkeys(r["rendered_prompt"] for r in runs
                                           if r["rendered_prompt"])),
            "texts": [{"text": t, "option": o, "reason": r, "count": int(n)}
                      for t, o, r, n in shown],
            "distinct": int(total_distinct or 0),
            "options": sorted(options.items(), key=lambda kv: (-kv[1], kv[0])),
            "reasons": sorted(reasons.items()),
            "option_counts": [(o, int(n)) for o, n in counted],
            "has_texts": bool(by_option),
        }

    def checkpoint_counts(self, model: str, task: str,
                          condition_key: str) -> dict[str, dict[str, int]]:
        """{prompt key: {option: count}} of one model's done, current runs of a task in a
        condition: the prompts' cells at a checkpoint the analysis' stage table does not
        hold (it keeps each stage's final checkpoint only)."""
        query = (
            select(Prompt.key, OptionCount.option, func.sum(OptionCount.count))
            .join(Run, Run.id == OptionCount.run_id).join(Model, Model.id == Run.model_id)
            .join(Task, Task.id == Run.task_id).join(Prompt, Prompt.id == Run.prompt_id)
            .where(Model.name == model, Task.name == task, Run.condition_key == condition_key,
                   Run.status == "done", Run.stale.is_(False))
            .group_by(Prompt.key, OptionCount.option)
        )
        counts: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for key, option, n in conn.execute(query):
                counts.setdefault(key, {})[option] = int(n)
        return counts

    def queue(self):
        from ingest.status import queue_status

        return queue_status(self.engine)


def task_groups(result, task: str, condition_key: str, families: tuple[str, ...] = ()):
    """The analysis groups of one task and condition that were sampled (and of these
    families, when given)."""
    if result is None:
        return []
    return [g for g in result.groups if g.task == task and g.condition_key == condition_key
            and g.stages and (not families or g.family in families)]


def counted_cell(options: list[str], counts: np.ndarray) -> dict[str, Any] | None:
    """One prompt's cell from its option counts: valid samples, the top option and its
    share, and the five most frequent options (the hover text); None when nothing counted."""
    total = float(counts.sum()) if counts.size else 0.0
    if total <= 0:
        return None
    order = np.argsort(-counts, kind="stable")[:5]
    top = [(options[k], float(counts[k] / total)) for k in order if counts[k] > 0]
    return {"n": total, "top": top[0][0], "share": top[0][1], "hover": top}


def prompt_cells(group) -> list[dict[str, Any]]:
    """Per prompt of a group, per stage: valid samples, the top option and its share, and
    the five most frequent options (the hover text)."""
    rows = []
    for j, key in enumerate(group.prompt_keys):
        cells = []
        for i in range(len(group.stages)):
            counts = group.counts[i, j] if group.counts.size else np.zeros(0)
            cells.append(counted_cell(group.options, counts) if group.sampled[i, j] else None)
        rows.append({"prompt": key, "seed": j == group.seed_index, "cells": cells})
    return rows

