"""Sampling conditions in the analysis (docs/metrics.md, section 11), on SQLite and
PostgreSQL: runs of one condition are pooled, runs of different conditions never are; a
temperature sweep is lined up per stage; stale runs are counted.

Stores are imported with import-counts' condition columns; a second run of one condition
(another seed of the same experiment) is written through the ORM, as ingest writes runs.
Expected numbers are computed here from the stored counts with plain NumPy.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest
from sqlalchemy import select, update

from analysis.crystallization import AnalysisOptions, analyze
from analysis.frames import read_counts
from analysis.options import ConditionSelection
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.errors import NotFound
from catalog.imports import import_counts
from catalog.schema import Model, OptionCount, Prompt, Run, Task
from catalog.toylab.synthetic import planted_counts

TASK = "pick"
STAGES = ("base", "sft", "dpo")
TEMPERATURES = (0.5, 1.0, 1.5)


def condition_frame(temperature: float, *, random_seed: int, families=("fam_a",), **overrides):
    """Planted counts at one temperature (max_new_tokens 24, top_p 1: the rest of the
    condition); another random seed gives other distributions."""
    fields = dict(families=families, stages=STAGES, tasks=(TASK,), n_prompts=6, n_options=5,
                  n_samples=200, random_seed=random_seed)
    fields.update(overrides)
    frame, seeds = planted_counts(**fields)
    return frame.with_columns(temperature=pl.lit(temperature), top_p=pl.lit(1.0),
                              max_new_tokens=pl.lit(24)), seeds


def store(engine, tmp_path, frame: pl.DataFrame) -> None:
    path = tmp_path / "counts.parquet"
    frame.drop("prompt_id").write_parquet(path)
    import_counts(engine, path)


def sweep_store(engine, tmp_path, families=("fam_a",)):
    frames = [condition_frame(t, random_seed=10 + i, families=families)[0]
              for i, t in enumerate(TEMPERATURES)]
    store(engine, tmp_path, pl.concat(frames))
    return frames


def distributions(frame: pl.DataFrame, stage: str) -> np.ndarray:
    """(prompts, options) of one stage, options in text order, from the counts frame."""
    wide = (
        frame.filter(pl.col("stage") == stage)
        .pivot("option", index="prompt_id", values="count", aggregate_function="sum")
        .sort("prompt_id")
    )
    counts = wide.select(sorted(c for c in wide.columns if c != "prompt_id")).to_numpy()
    return counts / counts.sum(axis=1, keepdims=True)


def entropy(p):
    p = np.asarray(p, float)
    return float(-np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0.0)))


def group(document, temperature, family="fam_a"):
    (found,) = [t for t in document["tasks"]
                if t["family"] == family and t["condition"].get("temperature") == temperature]
    return found


# ----- pooling -------------------------------------------------------------------------------


def test_two_conditions_of_one_model_are_never_pooled(engine, tmp_path):
    cold, _ = condition_frame(0.5, random_seed=1)
    hot, _ = condition_frame(1.5, random_seed=2, concentration=3.0)
    store(engine, tmp_path, pl.concat([cold, hot]))
    document = analyze(engine).to_dict()
    assert len(document["tasks"]) == 2
    for frame, temperature in ((cold, 0.5), (hot, 1.5)):
        task = group(document, temperature)
        assert task["condition"] == {**Condition.sampled(temperature=temperature, top_p=1.0,
                                                         top_k=None, max_new_tokens=24).to_dict(),
                                     "condition_key": task["condition"]["condition_key"]}
        for stage in STAGES:
            p = distributions(frame, stage)
            assert task["entropy"][stage]["pooled"] == pytest.approx(
                entropy(p.mean(axis=0)), abs=1e-12)
            assert task["entropy"][stage]["mean_prompt"] == pytest.approx(
                np.mean([entropy(row) for row in p]), abs=1e-12)
    keys = {t["condition"]["condition_key"] for t in document["tasks"]}
    assert len(keys) == 2


def test_runs_of_one_condition_are_pooled(engine, tmp_path):
    """A second run (another seed) of the same experiment adds its counts."""
    frame, _ = condition_frame(1.0, random_seed=3)
    store(engine, tmp_path, frame)
    condition = Condition.sampled(temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=24)
    extra = {"o00": 30, "o03": 10}
    with session_scope(engine) as session:
        model = session.scalar(select(Model).where(Model.name == "fam_a-sft"))
        prompt = session.scalar(select(Prompt).join(Task).where(Prompt.key == "p001"))
        run = Run(unit_key=hashlib.sha256(b"second seed").hexdigest(), model_id=model.id,
                  task_id=prompt.task_id, prompt_id=prompt.id, mode="sampled", status="done",
                  seed=2, n_samples=40, temperature=1.0, top_p=1.0, max_new_tokens=24,
                  condition=condition.to_dict(), condition_key=condition.key)
        session.add(run)
        session.flush()
        session.add_all(OptionCount(run_id=run.id, option=o, count=c) for o, c in extra.items())
    document = analyze(engine).to_dict()
    (task,) = document["tasks"]
    assert task["condition"]["condition_key"] == condition.key
    pooled = frame.vstack(
        frame.filter((pl.col("stage") == "sft") & (pl.col("prompt") == "p001"))
        .head(len(extra)).with_columns(option=pl.Series(list(extra)),
                                       count=pl.Series(list(extra.values())))
    )
    p = distributions(pooled, "sft")
    assert task["entropy"]["sft"]["pooled"] == pytest.approx(entropy(p.mean(axis=0)), abs=1e-12)
    assert task["validity"]["sft"] == 1.0


def test_cross_family_pairs_stay_within_one_condition(engine, tmp_path):
    sweep_store(engine, tmp_path, families=("fam_a", "fam_b"))
    document = analyze(engine).to_dict()
    assert len(document["cross_family"]) == 2 * len(TEMPERATURES)  # 2 ordered pairs each
    tasks = {(t["family"], t["condition"]["condition_key"]): t for t in document["tasks"]}
    for cross in document["cross_family"]:
        key = cross["condition"]["condition_key"]
        assert (cross["family_a"], key) in tasks and (cross["family_b"], key) in tasks
        assert cross["seed_prompt_a"] == tasks[(cross["family_a"], key)]["seed_prompt"]
        assert cross["seed_prompt_b"] == tasks[(cross["family_b"], key)]["seed_prompt"]
    result = analyze(engine)
    assert result.tasks["condition_key"].n_unique() == 3
    assert set(result.stages["temperature"].unique().to_list()) == set(TEMPERATURES)
    assert result.cross_family.filter(pl.col("temperature") == 0.5).height == 2


# ----- temperature sweep ---------------------------------------------------------------------


def test_a_sweep_over_three_temperatures(engine, tmp_path):
    frames = sweep_store(engine, tmp_path)
    document = analyze(engine).to_dict()
    (sweep,) = document["temperature_sweep"]
    assert sweep["temperatures"] == list(TEMPERATURES)
    assert sweep["stages"] == list(STAGES)
    assert sweep["condition"]["max_new_tokens"] == 24 and "temperature" not in sweep["condition"]
    reference = group(document, 1.0)
    assert sweep["reference_condition_key"] == reference["condition"]["condition_key"]
    assert sweep["reference_seed_prompt"] == reference["seed_prompt"]
    assert sweep["reference_seed_support"] == reference["seed_support"]
    options = sorted(pl.concat(frames)["option"].unique().to_list())
    support = [options.index(o) for o in reference["seed_support"]]
    assert len(sweep["points"]) == len(TEMPERATURES) * len(STAGES)
    for frame, temperature in zip(frames, TEMPERATURES):
        own = group(document, temperature)
        for stage in STAGES:
            (point,) = [p for p in sweep["points"]
                        if p["temperature"] == temperature and p["stage"] == stage]
            pbar = distributions(frame, stage).mean(axis=0)
            assert point["entropy_pooled"] == pytest.approx(entropy(pbar), abs=1e-12)
            assert point["entropy_mean_prompt"] == own["entropy"][stage]["mean_prompt"]
            assert point["liquidity"] == own["liquidity"][stage]
            assert point["probmass_own_seed"] == own["probmass"][stage]
            assert point["seed_prompt"] == own["seed_prompt"]
            assert point["probmass_reference_seed"] == pytest.approx(pbar[support].sum(), abs=1e-12)
    # At the reference temperature both ProbMass values are the same number.
    for point in sweep["points"]:
        if point["temperature"] == 1.0:
            assert point["probmass_reference_seed"] == pytest.approx(point["probmass_own_seed"])


def test_the_reference_temperature_is_an_option(engine, tmp_path):
    sweep_store(engine, tmp_path)
    document = analyze(engine, options=AnalysisOptions(reference_temperature=0.5)).to_dict()
    (sweep,) = document["temperature_sweep"]
    assert sweep["reference_temperature"] == 0.5
    assert sweep["reference_condition_key"] == group(document, 0.5)["condition"]["condition_key"]
    unsampled = analyze(engine, options=AnalysisOptions(reference_temperature=0.7)).to_dict()
    (sweep,) = unsampled["temperature_sweep"]
    assert sweep["reference_condition_key"] is None
    assert all(p["probmass_reference_seed"] is None for p in sweep["points"])
    assert all(p["probmass_own_seed"] is not None for p in sweep["points"])


# ----- selecting conditions, stale runs ------------------------------------------------------


def test_conditions_are_selected_by_their_parameters(engine, tmp_path):
    sweep_store(engine, tmp_path)
    chosen = analyze(engine, conditions=ConditionSelection(temperature=(0.5, 1.5))).to_dict()
    assert sorted(t["condition"]["temperature"] for t in chosen["tasks"]) == [0.5, 1.5]
    assert len(analyze(engine, conditions=ConditionSelection(max_new_tokens=(24,))).groups) == 3
    with pytest.raises(NotFound, match=r"no done sampled runs with temperature 0\.7 in the "
                       r"selection; it holds temperature 0\.5, 1, 1\.5"):
        read_counts(engine, conditions=ConditionSelection(temperature=(0.7,)))
    with pytest.raises(NotFound, match="top_k none"):
        read_counts(engine, conditions=ConditionSelection(top_k=(5,)))
    assert read_counts(engine, conditions=ConditionSelection(top_k=(0,))).units.height > 0


def test_stale_runs_are_counted_and_warned_about(engine, tmp_path):
    sweep_store(engine, tmp_path)
    assert analyze(engine).warnings == []
    with engine.begin() as conn:
        stale = conn.execute(select(Run.id).order_by(Run.id).limit(4)).scalars().all()
        conn.execute(update(Run).where(Run.id.in_(stale)).values(stale=True))
    data = read_counts(engine)
    assert data.stale_runs == 4
    (warning,) = analyze(engine).warnings
    assert warning.startswith("4 of the selected runs are stale")
    assert "catalog renormalize" in warning
