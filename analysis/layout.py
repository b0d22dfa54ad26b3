"""Dense (stage, prompt, option) arrays of every (family, task), built without row loops.

Each (family, task) gets a block of shape (S, N, K): its stages in stage order (ties by
name), the task's prompt axis (every prompt id sampled for the task in the selection,
ascending) and the task's option set ``O_t`` (text order). All blocks live in one flat
buffer filled by a single ``np.bincount`` over the count rows, which also pools the counts
of several runs of the same (model, prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from analysis.frames import CountData, option_sets


@dataclass(frozen=True)
class GroupSpec:
    """One (family, task): its stage axis and where its block starts in the buffers."""

    family: str
    task: str
    stages: list[str]
    stage_orders: list[int]
    offset: int  # first value of the (S, N, K) block
    cell_offset: int  # first cell of the (S, N) block


@dataclass
class Layout:
    """The selection as dense arrays (see the module docstring)."""

    task_names: list[str]
    kinds: dict[str, str]
    options: dict[str, list[str]]
    prompt_ids: dict[str, np.ndarray]
    prompt_keys: dict[str, list[str]]
    groups: list[GroupSpec]
    values: np.ndarray  # pooled counts or probabilities on O_t, all blocks
    sampled: np.ndarray  # per (stage, prompt) cell: a done run exists
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
        stages = (
            units.select("family", "task", "stage", "stage_order")
            .unique()
            .sort("family", "task", "stage_order", "stage")
            .with_columns(
                stage_index=pl.int_range(pl.len(), dtype=pl.Int64).over("family", "task")
            )
        )
        stage_lists = {
            (k[0], k[1]): (f["stage"].to_list(), f["stage_order"].to_list())
            for k, f in stages.partition_by(["family", "task"], as_dict=True).items()
        }

        # Every (family, task) of the selection, even one never sampled (reported as such).
        groups, offset, cell_offset = [], 0, 0
        for task in task_names:
            n, k = len(prompt_ids[task]), len(options[task])
            for family in family_names:
                names, orders = stage_lists.get((family, task), ([], []))
                groups.append(GroupSpec(family, task, names, orders, offset, cell_offset))
                offset += len(names) * n * k
                cell_offset += len(names) * n
        placement = pl.DataFrame(
            {
                "family": [g.family for g in groups],
                "task": [g.task for g in groups],
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
            .join(stages, on=["family", "task", "stage", "stage_order"])
            .join(placement, on=["family", "task"])
            .with_columns(
                local_cell=pl.col("stage_index") * pl.col("n_prompts") + pl.col("prompt_index")
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
            groups=groups,
            values=values,
            sampled=per_cell(np.ones(n_units), 0.0).astype(bool),
            n_valid=per_cell(unit_valid, 0.0),
            n_invalid=per_cell(n_invalid, 0.0),
            covered_mass=per_cell(covered, np.nan),
            outside_options=outside_options,
        )

    def block(self, spec: GroupSpec) -> np.ndarray:
        """The group's (S, N, K) pooled values on O_t."""
        s, n, k = self._shape(spec)
        return self.values[spec.offset : spec.offset + s * n * k].reshape(s, n, k)

    def cells(self, spec: GroupSpec, array: np.ndarray) -> np.ndarray:
        """The group's (S, N) slice of a per-cell array (sampled, n_valid, ...)."""
        s, n, _ = self._shape(spec)
        return array[spec.cell_offset : spec.cell_offset + s * n].reshape(s, n)

    def _shape(self, spec: GroupSpec) -> tuple[int, int, int]:
        return len(spec.stages), len(self.prompt_ids[spec.task]), len(self.options[spec.task])
