"""analysis.crystallization on in-memory counts: the contract's results, statuses, invariances."""

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.crystallization import AnalysisOptions, analyze_data, stage_roles
from analysis.frames import counts_from_frame
from catalog.errors import InvalidInput
from catalog.toylab.synthetic import planted_counts

TASK_KEYS = {
    "family", "task", "stages", "seed_prompt", "nucleation_ratio", "heldout", "entropy",
    "liquidity", "mse_to_seed", "probmass", "probmass_proxy", "verdict", "validity", "ci",
    "seed_stability", "status", "problems",
}
CROSS_KEYS = {
    "family_a", "family_b", "task", "seed_prompt_a", "seed_prompt_b", "mse", "rank",
    "n_candidates", "predictive_ratio", "same_seed_prompt",
}


def long_rows(distributions: dict, family="F", task="t", options="abc", orders=None):
    """Exact-mode rows from {stage: [distribution per prompt id]}."""
    orders = orders or {"base": 0, "sft": 1, "dpo": 2, "rl": 3}
    rows = []
    for stage, prompts in distributions.items():
        for pid, probs in enumerate(prompts):
            for option, p in zip(options, probs):
                rows.append({
                    "family": family, "stage": stage, "stage_order": orders[stage],
                    "task": task, "prompt": f"p{pid + 1}", "prompt_id": pid,
                    "option": option, "probability": float(p),
                })
    return rows


def count_rows(counts: dict, family="F", task="t", options="abc", invalid=None):
    """Sampled rows from {stage: [count vector per prompt id]}; invalid: {(stage, pid): n}."""
    orders = {"base": 0, "sft": 1, "dpo": 2, "rl": 3}
    rows = []
    for stage, prompts in counts.items():
        for pid, vector in enumerate(prompts):
            for option, c in zip(options, vector):
                rows.append({
                    "family": family, "stage": stage, "stage_order": orders[stage],
                    "task": task, "prompt": f"p{pid}", "prompt_id": pid, "option": option,
                    "count": int(c), "n_invalid": (invalid or {}).get((stage, pid), 0),
                })
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def planted():
    frame, seeds = planted_counts(
        families=("fam_a", "fam_b"), tasks=("t1", "t2"), n_prompts=10, n_options=8,
        n_samples=500, random_seed=11,
    )
    return frame, seeds


# ----- the worked example, end to end --------------------------------------------------------


def test_worked_example_through_the_analysis():
    base = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]
    frame = pl.DataFrame(long_rows({"base": base, "sft": [[0.9, 0.05, 0.05]]}))
    result = analyze_data(counts_from_frame(frame, {"t": ["a", "b", "c"]}, mode="exact"))
    task = result.to_dict()["tasks"][0]
    assert task["seed_prompt"] == "p1"
    assert round(task["nucleation_ratio"], 7) == 0.0388862
    assert task["seed_support"] == ["a", "b"]
    assert round(task["probmass"]["sft"], 7) == 0.95
    assert round(task["mse_to_seed"]["sft"], 7) == 0.005
    assert task["kind"] == "closed"


# ----- the planted scenario ------------------------------------------------------------------


def test_planted_seed_is_found_with_the_phase_verdicts(planted):
    frame, seeds = planted
    result = analyze_data(counts_from_frame(frame))
    for task in result.to_dict()["tasks"]:
        assert task["status"] == "ok"
        assert task["seed_prompt_id"] == seeds[(task["family"], task["task"])]
        assert task["verdict"]["liquid"] is True
        assert task["verdict"]["nucleated"] is True
        assert task["verdict"]["settled"] == {"dpo": True, "rl": True}
        assert task["nucleation_ratio"] < 0.1
        assert task["heldout"]["same_seed"] is True
        assert task["heldout"]["nucleation_ratio"] < 1
        assert task["stages"] == ["base", "sft", "dpo", "rl"]


def test_json_contract_keys_and_no_nan(planted):
    frame, _ = planted
    result = analyze_data(counts_from_frame(frame), AnalysisOptions(bootstrap=20))
    document = json.loads(result.to_json())  # to_json refuses NaN and infinity
    assert set(document) == {"thresholds", "problems", "tasks", "cross_family"}
    assert document["thresholds"]["tau"] == 0.9 and document["thresholds"]["bootstrap"] == 20
    for task in document["tasks"]:
        assert TASK_KEYS <= set(task)
        assert set(task["heldout"]) >= {"seed_prompt_a", "seed_prompt_b", "same_seed", "nucleation_ratio"}
        assert set(task["entropy"]["base"]) == {"mean_prompt", "pooled"}
        assert set(task["verdict"]) == {"liquid", "nucleated", "settled"}
        assert task["ci"]["liquidity"]["base"][0] <= task["ci"]["liquidity"]["base"][1]
        assert list(task["ci"]["nucleation_ratio"]) == ["value"]
        assert 0 <= task["seed_stability"] <= 1
    assert len(document["cross_family"]) == 4  # 2 ordered pairs x 2 tasks
    for cross in document["cross_family"]:
        assert CROSS_KEYS <= set(cross)


def test_frames_hold_the_json_numbers(planted):
    frame, _ = planted
    result = analyze_data(counts_from_frame(frame))
    document = result.to_dict()
    stages = result.stages
    assert stages.height == 16  # 2 families x 2 tasks x 4 stages
    for task in document["tasks"]:
        row = stages.filter(
            (pl.col("family") == task["family"]) & (pl.col("task") == task["task"]) & (pl.col("stage") == "sft")
        ).row(0, named=True)
        assert row["liquidity"] == task["liquidity"]["sft"]
        assert row["probmass"] == task["probmass"]["sft"]
    summary = result.tasks.sort("family", "task")
    assert summary["seed_prompt"].to_list() == [
        t["seed_prompt"] for t in sorted(document["tasks"], key=lambda t: (t["family"], t["task"]))
    ]
    assert result.cross_family.height == 4


def test_cross_family_with_a_shared_base_model_ranks_the_seed_first():
    frame, seeds = planted_counts(families=("a", "b"), n_prompts=12, n_samples=2000, random_seed=5)
    # Family b: the same base model as a (same base counts), its SFT nucleates on a's seed.
    base_a = frame.filter((pl.col("family") == "a") & (pl.col("stage") == "base"))
    frame = pl.concat([
        frame.filter(pl.col("family") == "a"),
        base_a.with_columns(family=pl.lit("b"), model=pl.lit("b-base")),
        frame.filter((pl.col("family") == "a") & (pl.col("stage") != "base"))
        .with_columns(family=pl.lit("b"), model=pl.concat_str(pl.lit("b-"), "stage")),
    ])
    result = analyze_data(counts_from_frame(frame))
    for cross in result.to_dict()["cross_family"]:
        assert cross["status"] == "ok"
        assert cross["rank"] == 1 and cross["n_candidates"] == 12
        assert cross["same_seed_prompt"] is True
        assert cross["seed_prompt_a"] == cross["seed_prompt_b"] == f"p{seeds[('a', 'digit')]:03d}"
        assert cross["predictive_ratio"] < 0.1


def test_cross_family_pairs_with_different_prompt_sets_are_reported_not_compared(planted):
    frame, _ = planted
    frame = frame.filter(~((pl.col("family") == "fam_b") & (pl.col("prompt_id") == 9)))
    result = analyze_data(counts_from_frame(frame))
    pairs = [c for c in result.to_dict()["cross_family"] if c["task"] == "t1"]
    assert len(pairs) == 2
    for cross in pairs:
        assert cross["status"] == "the base stages were sampled on different prompt sets"
        assert cross["mse"] is None and cross["rank"] is None


# ----- statuses and problems -----------------------------------------------------------------


def test_missing_sft_stage_is_reported_not_dropped(planted):
    frame, _ = planted
    frame = frame.filter(~((pl.col("family") == "fam_a") & (pl.col("stage") == "sft")))
    tasks = {(t["family"], t["task"]): t for t in analyze_data(counts_from_frame(frame)).to_dict()["tasks"]}
    assert len(tasks) == 4
    broken = tasks[("fam_a", "t1")]
    assert broken["status"] == "missing_stage"
    assert broken["seed_prompt"] is None and broken["nucleation_ratio"] is None
    assert broken["stages"] == ["base", "dpo", "rl"]
    assert broken["liquidity"]["base"] > 0.1  # what can be computed still is
    assert any("no SFT stage" in p for p in broken["problems"])
    assert tasks[("fam_b", "t1")]["status"] == "ok"


def test_family_without_runs_for_a_task_is_reported(planted):
    frame, _ = planted
    frame = frame.filter(~((pl.col("family") == "fam_b") & (pl.col("task") == "t2")))
    tasks = {(t["family"], t["task"]): t for t in analyze_data(counts_from_frame(frame)).to_dict()["tasks"]}
    assert tasks[("fam_b", "t2")]["status"] == "missing_stage"
    assert tasks[("fam_b", "t2")]["stages"] == []
    assert tasks[("fam_b", "t2")]["problems"] == ["no done runs of this family for this task"]


def test_prompts_without_valid_samples_are_excluded_and_reported():
    frame = count_rows(
        {"base": [[9, 1, 0], [0, 0, 0], [1, 9, 0]], "sft": [[10, 0, 0], [9, 1, 0], [10, 0, 0]]},
        invalid={("base", 1): 10},
    )
    task = analyze_data(counts_from_frame(frame)).to_dict()["tasks"][0]
    assert task["excluded_prompts"] == {"base": ["p1"]}
    assert task["n_prompts"] == {"base": 2, "sft": 3}
    assert any("p1" in p and "excluded" in p for p in task["problems"])
    assert task["validity"]["base"] == pytest.approx(20 / 30)
    assert task["seed_prompt"] == "p0"


def test_a_task_without_any_valid_sample_is_reported():
    frame = count_rows({"base": [[0, 0, 0]], "sft": [[0, 0, 0]]}, invalid={("base", 0): 5})
    frame = frame.with_columns(option=pl.lit(None, pl.String)).unique()
    result = analyze_data(counts_from_frame(frame), AnalysisOptions(bootstrap=5))
    task = json.loads(result.to_json())["tasks"][0]
    assert task["status"] == "too_few_samples"
    assert task["n_options"] == 0
    assert task["validity"] == {"base": 0.0, "sft": None}
    assert task["liquidity"] == {"base": None, "sft": None}
    assert "no valid sample of this task in the selection: no option to analyze" in task["problems"]
    assert "stage base: 1 prompt(s) excluded for having no valid sample: p0" in task["problems"]


def test_min_samples_excludes_thin_prompts_and_can_starve_a_stage():
    frame = count_rows({"base": [[3, 1, 0], [0, 2, 2]], "sft": [[4, 0, 0], [3, 1, 0]]})
    result = analyze_data(counts_from_frame(frame), AnalysisOptions(min_samples=5))
    task = result.to_dict()["tasks"][0]
    assert task["status"] == "too_few_samples"
    assert task["excluded_prompts"] == {"base": ["p0", "p1"], "sft": ["p0", "p1"]}
    assert task["seed_prompt"] is None


def test_nucleation_ratio_is_null_when_sft_equals_the_base_mean():
    base = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    frame = pl.DataFrame(long_rows({"base": base, "sft": [[0.5, 0.5, 0.0]]}))
    task = analyze_data(counts_from_frame(frame, mode="exact")).to_dict()["tasks"][0]
    assert task["nucleation_ratio"] is None
    # Undefined NR, but ProbMass[sft] = 0.5 < 0.8 already rules nucleation out.
    assert task["probmass"]["sft"] == pytest.approx(0.5)
    assert task["verdict"]["nucleated"] is False
    json.dumps(task, allow_nan=False)
    # With that condition met, nothing rules nucleation out, nothing proves it: undefined.
    lenient = AnalysisOptions(probmass_threshold=0.5)
    task = analyze_data(counts_from_frame(frame, mode="exact"), lenient).to_dict()["tasks"][0]
    assert task["verdict"]["nucleated"] is None


def test_heldout_split_even_ids_choose_odd_ids_evaluate():
    base = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.4, 0.4, 0.2]]
    sft = [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.2, 0.8, 0.0]]  # ids 0..3
    frame = pl.DataFrame(long_rows({"base": base, "sft": sft}))
    heldout = analyze_data(counts_from_frame(frame, mode="exact")).to_dict()["tasks"][0]["heldout"]
    assert heldout["seed_prompt_a"] == "p1"  # even ids 0, 2 -> mean (0.85, 0.15, 0)
    assert heldout["seed_prompt_b"] == "p2"  # odd ids 1, 3 -> mean (0.15, 0.85, 0)
    assert heldout["same_seed"] is False
    odd_mean = np.array([0.15, 0.85, 0.0])
    base_mean = np.mean(base, axis=0)
    expected_mse = np.mean((odd_mean - np.array(base[0])) ** 2)
    assert heldout["mse"] == pytest.approx(expected_mse)
    assert heldout["nucleation_ratio"] == pytest.approx(expected_mse / np.mean((odd_mean - base_mean) ** 2))


def test_threshold_options_change_verdicts_and_are_reported(planted):
    frame, _ = planted
    options = AnalysisOptions(liquid_threshold=0.99, probmass_threshold=0.999)
    document = analyze_data(counts_from_frame(frame), options).to_dict()
    assert document["thresholds"]["liquid_threshold"] == 0.99
    assert all(t["verdict"]["liquid"] is False for t in document["tasks"])
    assert all(t["verdict"]["nucleated"] is False for t in document["tasks"])


def test_options_outside_a_closed_task_are_left_out_and_reported():
    frame = count_rows({"base": [[5, 5, 2], [2, 5, 5]], "sft": [[9, 1, 2], [9, 1, 0]]}, options="abz")
    task = analyze_data(counts_from_frame(frame, {"t": ["a", "b"]})).to_dict()["tasks"][0]
    assert task["n_options"] == 2
    assert any("outside the task's closed option list" in p for p in task["problems"])
    # Without the z samples both SFT prompts are (0.9, 0.1): the proxy support is {a}.
    assert task["probmass_proxy"]["sft"] == pytest.approx(0.9)
    assert task["entropy"]["sft"]["pooled"] == pytest.approx(0.4689956, abs=1e-7)


def test_open_task_options_are_the_union_over_compared_families():
    a = count_rows({"base": [[5, 5, 0], [1, 1, 0]], "sft": [[4, 1, 0], [4, 1, 0]]}, family="a")
    b = count_rows({"base": [[5, 0, 5], [1, 0, 1]], "sft": [[4, 0, 1], [4, 0, 1]]}, family="b")
    tasks = analyze_data(counts_from_frame(pl.concat([a, b]))).to_dict()["tasks"]
    assert [t["n_options"] for t in tasks] == [3, 3]
    only_a = analyze_data(counts_from_frame(a)).to_dict()["tasks"][0]
    assert only_a["n_options"] == 2  # option c was never observed in family a
    assert only_a["mse_to_seed"]["sft"] != tasks[0]["mse_to_seed"]["sft"]  # MSE divides by |O_t|


def test_bootstrap_needs_sampled_counts():
    frame = pl.DataFrame(long_rows({"base": [[0.5, 0.5, 0.0]], "sft": [[1.0, 0.0, 0.0]]}))
    with pytest.raises(InvalidInput, match="exact probabilities"):
        analyze_data(counts_from_frame(frame, mode="exact"), AnalysisOptions(bootstrap=10))


def test_stage_roles():
    roles = stage_roles(["base", "sft", "dpo"], [0, 1, 2])
    assert (roles.base, roles.sft) == (0, 1)
    roles = stage_roles(["pre", "mid", "SFT", "rl"], [0, 1, 2, 3])
    assert (roles.base, roles.sft) == (0, 2)  # the stage named sft wins over order 1
    roles = stage_roles(["Base", "instruct"], [3, 5])
    assert (roles.base, roles.sft) == (0, None)  # named base; no sft
    roles = stage_roles(["base", "tuned"], [0, 1])
    assert (roles.base, roles.sft) == (0, 1)


# ----- bootstrap determinism -----------------------------------------------------------------


def test_same_bootstrap_seed_gives_the_same_intervals(planted):
    frame, _ = planted
    data = counts_from_frame(frame)
    first = analyze_data(data, AnalysisOptions(bootstrap=30, seed=7)).to_dict()
    again = analyze_data(data, AnalysisOptions(bootstrap=30, seed=7)).to_dict()
    other = analyze_data(data, AnalysisOptions(bootstrap=30, seed=8)).to_dict()
    assert first == again
    assert first["tasks"][0]["ci"] != other["tasks"][0]["ci"]


def test_a_groups_intervals_do_not_depend_on_the_other_families(planted):
    frame, _ = planted
    options = AnalysisOptions(bootstrap=25, seed=3)
    closed = {t: [f"o{i:02d}" for i in range(8)] for t in ("t1", "t2")}  # the same O_t either way
    both = analyze_data(counts_from_frame(frame, closed), options).to_dict()["tasks"]
    alone = analyze_data(counts_from_frame(frame.filter(pl.col("family") == "fam_a"), closed), options)
    by_key = {(t["family"], t["task"]): t for t in both}
    for task in alone.to_dict()["tasks"]:
        assert task["ci"] == by_key[(task["family"], task["task"])]["ci"]


# ----- invariance (hypothesis, derandomized) ---------------------------------------------------


def _numbers(result):
    """Everything but names: per-stage metrics, seed ids, ratios, verdicts."""
    numbers = result.stages.drop("family", "task").to_dicts()
    summary = result.tasks.select(
        "seed_prompt_id", "nucleation_ratio", "heldout_mse", "heldout_nucleation_ratio",
        "heldout_same_seed", "liquid", "nucleated", "seed_stability",
    ).to_dicts()
    cross = result.cross_family.select("mse", "rank", "predictive_ratio", "same_seed_prompt").to_dicts()
    return numbers, summary, cross


@settings(derandomize=True, max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_results_do_not_depend_on_row_order_or_naming(shuffle_seed):
    frame, _ = planted_counts(families=("x", "y"), n_prompts=6, n_options=5, n_samples=60, random_seed=2)
    options = AnalysisOptions(bootstrap=10, seed=1)
    reference = analyze_data(counts_from_frame(frame), options)
    rng = np.random.default_rng(shuffle_seed)
    # Prompt keys renamed arbitrarily (ids kept); options renamed keeping their text order
    # (the contract breaks ties by option text); rows shuffled.
    new_keys = {f"p{i:03d}": f"variant-{k}" for i, k in enumerate(rng.permutation(100)[:6])}
    renamed = frame.with_columns(
        pl.col("prompt").replace_strict(new_keys),
        pl.concat_str(pl.lit("answer "), "option").alias("option"),
    ).sample(fraction=1.0, shuffle=True, seed=int(shuffle_seed))
    result = analyze_data(counts_from_frame(renamed), options)
    assert _numbers(result) == _numbers(reference)
    keys = result.tasks["seed_prompt"].to_list()
    assert keys == [new_keys[k] for k in reference.tasks["seed_prompt"].to_list()]
