"""Dense (checkpoint, prompt, option) arrays of every (family, task, condition), built
without row loops.

Each (family, task, condition) gets a block of shape (C, N, K): its checkpoints in order
(stage_order, then stage name, then step; a stage's step-less model after its steps), the
task's prompt axis (every prompt id sampled for the task in the selection, ascending) and the
task's option set ``O_t`` (text order). A stage without steps is one checkpoint, so a store
without checkpoints has one checkpoint per stage. All blocks live in one flat buffer filled
by a single ``np.bincount`` over the count rows, which also pools the counts of several runs
of the same (model, prompt, condition).

Groups are ordered by condition (:func:`condition_sort_key`), then task, then family; every
family of the selection has a group in every condition of every task, an empty one (no
checkpoints) where it has no runs there, so that it is reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from analysis.frames import CountData, option_sets

Checkpoint = tuple[str, int | None]  # (stage, step); step None: the stage's one model


@dataclass(frozen=True)
class GroupSpec:
    """One (family, task, condition): its checkpoint axis and where its block starts.

    ``stages`` / ``stage_orders`` are its stages in order; ``finals`` the checkpoint index
    of each stage's final checkpoint (the highest step, or the step-less model), which the
    stage metrics use (docs/metrics.md, section 12).
    """

    family: str
    task: str
    condition_key: str
    checkpoints: list[Checkpoint]
    stages: list[str]
    stage_orders: list[int]
    finals: list[int]
    offset: int  # first value of the (C, N, K) block
    cell_offset: int  # first cell of the (C, N) block


def condition_sort_key(key: str, condition: Mapping[str, Any]) -> tuple:
    """Conditions in a readable order: sampled before exact, known before imported, then by
    temperature, top_p, top_k, max_new_tokens, stop strings, scaffold (unset first)."""

    def value(name: str, default: Any) -> tuple:
        v = condition.get(name)
        return (v is not None, default if v is None else v)

    return (
        condition.get("mode", "sampled") != "sampled",
        bool(condition.get("imported")),
        value("temperature", 0.0),
        value("top_p", 0.0),
        value("top_k", 0),
        value("max_new_tokens", 0),
        tuple(condition.get("stop") or ()),
        value("scaffold", ""),
        key,
    )


@dataclass
class Layout:
    """The selection as dense arrays (see the module docstring)."""

    task_names: list[str]
    kinds: dict[str, str]
    options: dict[str, list[str]]
    prompt_ids: dict[str, np.ndarray]
    prompt_keys: dict[str, list[str]]
    conditions: dict[str, dict[str, Any]]  # condition_key -> its JSON
    groups: list[GroupSpec]
    values: np.ndarray  # pooled counts or probabilities on O_t, all blocks
    sampled: np.ndarray  # per (checkpoint, prompt) cell: a done run exists
    n_valid: np.ndarray  # per cell: valid samples as stored (options outside O_t included)
    n_invalid: np.ndarray  # per cell: invalid samples
    covered_mass: np.ndarray  # per cell: exact mode's covered probability mass (NaN if none)
    outside_options: dict[str, float]  # task -> value on options outside a closed list

    @classmethod
    def build(cls, data: CountData) -> Layout:
        units = data.units
        task_names = sorted(units["task"].unique().to_list())
        family_names = sorted(units["family"].unique().to_list())
        kinds = dict(data.tasks.select("task", "kind").iter_rows())
        optset = option_sets(data)
        options = {t: [] for t in task_names} | {
            key[0]: part["option"].to_list()
            for key, part in optset.partition_by("task", as_dict=True).items()
        }
        prompts = (
            units.select("task", "prompt_id", "prompt")
            .unique(subset=["task", "prompt_id"], keep="first")
            .sort("task", "prompt_id")
            .with_columns(prompt_index=pl.int_range(pl.len(), dtype=pl.Int64).over("task"))
        )
        by_task = prompts.partition_by("task", as_dict=True)
        prompt_ids = {k[0]: f["prompt_id"].to_numpy() for k, f in by_task.items()}
        prompt_keys = {k[0]: f["prompt"].to_list() for k, f in by_task.items()}
        group_keys = ["family", "task", "condition_key"]
        checkpoint_keys = ["stage", "stage_order", "step"]
        checkpoints = (
            units.select(*group_keys, *checkpoint_keys)
            .unique()
            .sort(*group_keys, "stage_order", "stage", "step", nulls_last=True)
            .with_columns(
                checkpoint_index=pl.int_range(pl.len(), dtype=pl.Int64).over(group_keys)
            )
        )
        checkpoint_lists = {
            key: list(zip(f["stage"].to_list(), f["stage_order"].to_list(), f["step"].to_list()))
            for key, f in checkpoints.partition_by(group_keys, as_dict=True).items()
        }
        conditions = {
            key: dict(data.conditions.get(key, {}))
            for key in units["condition_key"].unique().to_list()
        }
        task_conditions = {
            key[0]: sorted(
                f["condition_key"].unique().to_list(),
                key=lambda c: condition_sort_key(c, conditions[c]),
            )
            for key, f in units.select("task", "condition_key").partition_by(
                "task", as_dict=True
            ).items()
        }
        ordered_conditions = sorted(conditions, key=lambda c: condition_sort_key(c, conditions[c]))

        # Every (family, task) in every condition of the task, even one never sampled there
        # (reported as such).
        groups, offset, cell_offset = [], 0, 0
        for condition in ordered_conditions:
            for task in task_names:
                if condition not in task_conditions[task]:
                    continue
                n, k = len(prompt_ids[task]), len(options[task])
                for family in family_names:
                    spec = _group_spec(
                        family, task, condition,
                        checkpoint_lists.get((family, task, condition), []), offset, cell_offset,
                    )
                    groups.append(spec)
                    offset += len(spec.checkpoints) * n * k
                    cell_offset += len(spec.checkpoints) * n
        placement = pl.DataFrame(
            {
                "family": [g.family for g in groups],
                "task": [g.task for g in groups],
                "condition_key": [g.condition_key for g in groups],
                "offset": [g.offset for g in groups],
                "cell_offset": [g.cell_offset for g in groups],
                "n_prompts": [len(prompt_ids[g.task]) for g in groups],
                "n_options": [len(options[g.task]) for g in groups],
            },
            schema_overrides={
                c: pl.Int64 for c in ("offset", "cell_offset", "n_prompts", "n_options")
            },
        )
        coded = (
            units.join(
                prompts.select("task", "prompt_id", "prompt_index"), on=["task", "prompt_id"]
            )
            .join(checkpoints, on=[*group_keys, *checkpoint_keys], nulls_equal=True)
            .join(placement, on=group_keys)
            .with_columns(
                local_cell=pl.col("checkpoint_index") * pl.col("n_prompts")
                + pl.col("prompt_index")
            )
            .with_columns(
                cell=pl.col("cell_offset") + pl.col("local_cell"),
                base=pl.col("offset") + pl.col("local_cell") * pl.col("n_options"),
            )
            .sort("unit")
        )
        n_units = units.height
        unit_base = np.zeros(n_units, dtype=np.int64)
        unit_cell = np.zeros(n_units, dtype=np.int64)
        unit_index = coded["unit"].to_numpy().astype(np.int64)
        unit_base[unit_index] = coded["base"].to_numpy()
        unit_cell[unit_index] = coded["cell"].to_numpy()

        placed = (
            data.counts.lazy()
            .join(coded.lazy().select("unit", "task"), on="unit")
            .join(optset.lazy(), on=["task", "option"], how="left")
            .select("unit", "task", "option_index", "value")
            .collect()
        )
        row_unit = placed["unit"].to_numpy().astype(np.int64)
        row_value = placed["value"].to_numpy().astype(float)
        unit_valid = np.bincount(row_unit, weights=row_value, minlength=n_units)
        outside = placed.filter(pl.col("option_index").is_null())
        outside_options = dict(outside.group_by("task").agg(pl.col("value").sum()).iter_rows())
        inside = placed["option_index"].is_not_null().to_numpy()
        flat = unit_base[row_unit[inside]] + placed["option_index"].to_numpy()[inside]
        values = np.bincount(flat.astype(np.int64), weights=row_value[inside], minlength=offset)

        def per_cell(unit_values: np.ndarray, fill: float) -> np.ndarray:
            cells = np.full(cell_offset, fill)
            cells[unit_cell] = unit_values
            return cells

        n_invalid = np.zeros(n_units)
        n_invalid[unit_index] = coded["n_invalid"].to_numpy()
        covered = np.full(n_units, np.nan)
        covered[unit_index] = coded["covered_mass"].fill_null(np.nan).to_numpy()
        return cls(
            task_names=task_names,
            kinds={t: kinds.get(t, "open") for t in task_names},
            options=options,
            prompt_ids=prompt_ids,
            prompt_keys=prompt_keys,
            conditions=conditions,
            groups=groups,
            values=values,
            sampled=per_cell(np.ones(n_units), 0.0).astype(bool),
            n_valid=per_cell(unit_valid, 0.0),
            n_invalid=per_cell(n_invalid, 0.0),
            covered_mass=per_cell(covered, np.nan),
            outside_options=outside_options,
        )

    def block(self, spec: GroupSpec) -> np.ndarray:
        """The group's (C, N, K) pooled values on O_t, all checkpoints."""
        c, n, k = self._shape(spec)
        return self.values[spec.offset : spec.offset + c * n * k].reshape(c, n, k)

    def cells(self, spec: GroupSpec, array: np.ndarray) -> np.ndarray:
        """The group's (C, N) slice of a per-cell array (sampled, n_valid, ...)."""
        c, n, _ = self._shape(spec)
        return array[spec.cell_offset : spec.cell_offset + c * n].reshape(c, n)

    def _shape(self, spec: GroupSpec) -> tuple[int, int, int]:
        return (
            len(spec.checkpoints),
            len(self.prompt_ids[spec.task]),
            len(self.options[spec.task]),
        )


def _group_spec(
    family: str,
    task: str,
    condition: str,
    checkpoints: list[tuple[str, int, int | None]],
    offset: int,
    cell_offset: int,
) -> GroupSpec:
    """A group's spec from its ordered (stage, stage_order, step) checkpoints."""
    stages: list[str] = []
    orders: list[int] = []
    finals: list[int] = []
    for index, (stage, order, _step) in enumerate(checkpoints):
        if stages and stages[-1] == stage:
            finals[-1] = index  # checkpoints are ordered: the stage's last one is its final
        else:
            stages.append(stage)
            orders.append(int(order))
            finals.append(index)
    return GroupSpec(
        family=family,
        task=task,
        condition_key=condition,
        checkpoints=[
            (stage, None if step is None else int(step)) for stage, _, step in checkpoints
        ],
        stages=stages,
        stage_orders=orders,
        finals=finals,
        offset=offset,
        cell_offset=cell_offset,
    )
