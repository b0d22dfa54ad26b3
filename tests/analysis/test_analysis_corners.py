"""Corners of the analysis that must not be hidden or decided by rounding, on SQLite and
PostgreSQL (stores imported with import-counts and import-completions): exact ties, cross-family
rows without a base stage, prompt ids independent of file order, every drop named in
``problems``, a store without a valid answer, verdicts with their bootstrap support.

Expected values are computed here from the counts with exact fractions
(``fractions.Fraction``), never with the analysis' code.
"""

from __future__ import annotations

import json
from fractions import Fraction

from math import comb

import polars as pl
import pytest
from scipy.stats import binomtest

from analysis.crystallization import AnalysisOptions, analyze
from analysis.render import to_table
from analysis.report import write_report
from catalog.imports import import_completions, import_counts

TASK = "pick"  # an open task: its options are the ones observed
OPTIONS = "abc"
ORDERS = {"base": 0, "sft": 1, "dpo": 2}


def rows(counts: dict, family: str = "fam", task: str = TASK) -> list[dict]:
    """Import-counts rows from {stage: {prompt key: count vector over OPTIONS}}."""
    out = []
    for stage, prompts in counts.items():
        for prompt, vector in prompts.items():
            for option, count in zip(OPTIONS, vector):
                out.append({"family": family, "stage": stage, "stage_order": ORDERS[stage],
                            "model": f"{family}-{stage}", "task": task, "prompt": prompt,
                            "option": option, "count": int(count)})
    return out


def store(engine, tmp_path, records: list[dict], name: str = "counts") -> None:
    path = tmp_path / f"{name}.csv"
    pl.DataFrame(records).write_csv(path)
    import_counts(engine, path)


def one(document: dict, family: str = "fam", task: str = TASK) -> dict:
    (found,) = [t for t in document["tasks"] if t["family"] == family and t["task"] == task]
    return found


def fractions(vector) -> list[Fraction]:
    total = sum(vector)
    return [Fraction(int(c), int(total)) for c in vector]


def mean(vectors) -> list[Fraction]:
    return [sum(column) / len(vectors) for column in zip(*vectors)]


def mse(p, q) -> Fraction:
    return sum((a - b) ** 2 for a, b in zip(p, q)) / len(p)


# ----- 1. exact ties -------------------------------------------------------------------------

# (10,26,0)/36 and (0,26,10)/36 are exactly as far from (2,19,2)/23; in floating point the
# two MSE values differ in the last bits, one way or the other depending on the order.
TIED = ((10, 26, 0), (0, 26, 10))


@pytest.mark.parametrize("first", [0, 1])
def test_an_exact_seed_tie_goes_to_the_lower_prompt_id(engine, tmp_path, first):
    base = {"p0": TIED[first], "p1": TIED[1 - first]}
    sft = {"p0": (2, 19, 2), "p1": (2, 19, 2)}
    store(engine, tmp_path, rows({"base": base, "sft": sft})
          + rows({"base": base, "sft": sft}, family="other"))
    target = mean([fractions(v) for v in sft.values()])
    assert mse(fractions(base["p0"]), target) == mse(fractions(base["p1"]), target)
    document = analyze(engine).to_dict()
    assert one(document)["seed_prompt"] == "p0"
    (pair,) = [c for c in document["cross_family"] if c["family_a"] == "fam"]
    assert pair["rank"] == 1 and pair["n_candidates"] == 2


def test_an_exact_tie_in_the_proxy_support_goes_to_option_text_order(engine, tmp_path):
    # Pbar[sft] = (1/5, 1/5, 3/5) exactly; summed in prompt order, a's 0.3 + 0.2 + 0.1 and
    # b's 0.1 + 0.2 + 0.3 are different floats (b's is larger).
    sft = {"p0": (3, 1, 6), "p1": (2, 2, 6), "p2": (1, 3, 6)}
    base = {"p0": (5, 1, 4), "p1": (1, 5, 4), "p2": (4, 2, 4)}
    store(engine, tmp_path, rows({"base": base, "sft": sft}))
    options = AnalysisOptions(tau=0.7)  # support: c (3/5 < 0.7), then a (tied with b)
    task = one(analyze(engine, options=options).to_dict())
    base_mean = mean([fractions(v) for v in base.values()])
    expected = base_mean[2] + base_mean[0]  # c and a, not c and b
    assert expected != base_mean[2] + base_mean[1]
    assert task["probmass_proxy"]["base"] == pytest.approx(float(expected), abs=1e-12)


# ----- 2. cross-family rows without a base stage in family B --------------------------------


def test_a_family_without_a_base_stage_is_predicted_from_another_familys_seed(engine, tmp_path):
    base = {"p0": (8, 1, 1), "p1": (1, 8, 1), "p2": (3, 3, 4)}
    sft = {"p0": (9, 1, 0), "p1": (8, 1, 1), "p2": (9, 0, 1)}
    own_sft = {"p0": (6, 3, 1), "p1": (7, 2, 1), "p2": (5, 4, 1)}  # an SFT of fam's base
    store(engine, tmp_path, rows({"base": base, "sft": sft})
          + rows({"sft": own_sft}, family="lab-sft"))
    result = analyze(engine, options=AnalysisOptions(bootstrap=50))
    document = result.to_dict()
    (pair,) = [c for c in document["cross_family"]
               if (c["family_a"], c["family_b"]) == ("fam", "lab-sft")]

    candidates = {key: fractions(v) for key, v in base.items()}
    own_target = mean([fractions(v) for v in sft.values()])
    seed = min(candidates, key=lambda k: (mse(candidates[k], own_target), k))
    target = mean([fractions(v) for v in own_sft.values()])
    errors = {key: mse(p, target) for key, p in candidates.items()}
    rank = 1 + sum(e < errors[seed] for e in errors.values())
    ratio = errors[seed] / mse(target, mean(list(candidates.values())))
    assert pair["status"] == "ok"
    assert pair["seed_prompt_a"] == seed and pair["seed_prompt_b"] is None
    assert pair["mse"] == pytest.approx(float(errors[seed]), rel=1e-12)
    assert pair["rank"] == rank and pair["n_candidates"] == 3
    assert pair["predictive_ratio"] == pytest.approx(float(ratio), rel=1e-12)
    assert pair["same_seed_prompt"] is None
    low, high = pair["ci"]["mse"]
    assert low <= high
    (back,) = [c for c in document["cross_family"] if c["family_a"] == "lab-sft"]
    assert back["status"] == "no seed for lab-sft (missing_stage)" and back["mse"] is None


# ----- 3. prompt ids that do not depend on the file's row order --------------------------------


def positions(engine, task: str) -> dict[str, int]:
    from sqlalchemy import select

    from catalog.schema import Prompt, Task

    with engine.connect() as conn:
        return dict(conn.execute(select(Prompt.key, Prompt.position).join(Task)
                                 .where(Task.name == task)).all())


HELD_OUT = {"base": {"k1": (8, 1, 1), "a2": (1, 8, 1), "z0": (3, 3, 4), "m5": (5, 4, 1)},
            "sft": {"k1": (9, 1, 0), "a2": (2, 7, 1), "z0": (8, 1, 1), "m5": (7, 2, 1)}}


def test_the_same_rows_in_another_order_give_the_same_prompt_ids(engine, tmp_path):
    forward = rows(HELD_OUT, task="forward")
    backward = list(reversed(rows(HELD_OUT, task="backward")))
    store(engine, tmp_path, forward, name="forward")
    store(engine, tmp_path, backward, name="backward")
    expected = {key: i for i, key in enumerate(sorted(HELD_OUT["base"]))}  # key order
    assert positions(engine, "forward") == positions(engine, "backward") == expected
    document = analyze(engine).to_dict()
    first, second = one(document, task="forward"), one(document, task="backward")
    assert first["heldout"] == second["heldout"]
    # The held-out check by hand: even ids (a2, m5) choose, odd ids (k1, z0) evaluate.
    base = {k: fractions(v) for k, v in HELD_OUT["base"].items()}
    sft = {k: fractions(v) for k, v in HELD_OUT["sft"].items()}
    choosing, evaluating = mean([sft["a2"], sft["m5"]]), mean([sft["k1"], sft["z0"]])
    seed = min(sorted(base, key=expected.get), key=lambda k: mse(base[k], choosing))
    assert first["heldout"]["seed_prompt_a"] == seed
    assert first["heldout"]["mse"] == pytest.approx(float(mse(evaluating, base[seed])), rel=1e-12)


def test_prompt_positions_given_in_the_file_are_kept(engine, tmp_path):
    given = {"k1": 3, "a2": 0}
    records = [{**r, "prompt_position": given.get(r["prompt"])} for r in rows(HELD_OUT)]
    store(engine, tmp_path, records)
    # given positions first; the rest take the free positions 1 and 2 in key order
    assert positions(engine, TASK) == {"a2": 0, "k1": 3, "m5": 1, "z0": 2}
    store(engine, tmp_path, rows({"base": {"b9": (1, 1, 1), "a1": (2, 1, 1)}}), name="more")
    assert positions(engine, TASK) == {"a2": 0, "k1": 3, "m5": 1, "z0": 2, "a1": 4, "b9": 5}


@pytest.mark.parametrize("records, message", [
    ([{"prompt": "k1", "prompt_position": 1}, {"prompt": "a2", "prompt_position": 2},
      {"prompt": "k1", "prompt_position": 2}], "differs from an earlier row"),
    ([{"prompt": "new", "prompt_position": 0}], "taken by prompt 'a2'"),
    ([{"prompt": "a2", "prompt_position": 5}], "is stored at position 0, not 5"),
    ([{"prompt": "x", "prompt_position": -1}], "is negative"),
    ([{"prompt": "x", "prompt_position": "first"}], "is not a whole number"),
])
def test_bad_prompt_positions_are_refused_and_change_nothing(engine, tmp_path, records, message):
    from catalog.errors import InvalidInput

    store(engine, tmp_path, rows({"base": {"a2": (1, 2, 3)}}), name="first")
    before = positions(engine, TASK)
    bad = [{"family": "fam", "stage": "sft", "model": "fam-sft", "task": TASK, "option": "a",
            "count": 1, **r} for r in records]
    with pytest.raises(InvalidInput, match=message):
        store(engine, tmp_path, bad, name="bad")
    assert positions(engine, TASK) == before


# ----- 4. every drop named ----------------------------------------------------------------------


def kinds_of(document: dict, family: str, task: str = TASK) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for problem in document["problems"]:
        if problem["family"] == family and problem["task"] == task:
            found.setdefault(problem["kind"], []).append(problem)
    return found


def test_missing_stages_prompts_and_undefined_values_are_named(engine, tmp_path):
    full = {"base": {"p0": (8, 1, 1), "p1": (1, 8, 1)}, "sft": {"p0": (9, 1, 0), "p1": (8, 1, 1)},
            "dpo": {"p0": (9, 0, 1), "p1": (9, 1, 0)}}
    # no DPO, and prompt p1 missing at SFT
    short = {"base": {"p0": (5, 4, 1), "p1": (2, 7, 1)}, "sft": {"p0": (6, 3, 1)}}
    store(engine, tmp_path, rows(full) + rows(short, family="short"))
    document = json.loads(analyze(engine).to_json())
    problems = kinds_of(document, "short")
    (missing,) = problems["missing_stage"]
    assert missing["stage"] == "dpo"
    assert problems["no_settling_stage"][0]["role"] == "settling"
    (gap,) = problems["missing_prompt"]
    assert (gap["stage"], gap["prompts"]) == ("sft", ["p1"])
    assert one(document, "short")["n_prompts"] == {"base": 2, "sft": 1}
    undefined = {p["metric"] for p in problems["undefined_value"]}
    assert undefined == {"liquidity", "heldout"}  # one SFT prompt: no odd half, no pairs
    assert "short" not in {p["family"] for p in document["problems"]
                           if p["kind"] == "no_settling_stage" and p["family"] == "fam"}
    assert "missing_stage" not in kinds_of(document, "fam")
    task = one(document, "short")
    assert all(p["message"] in task["problems"]
               for p in document["problems"] if p["family"] == "short" and p["task"] == TASK)


def test_a_one_option_task_names_why_its_ratios_are_null(engine, tmp_path):
    records = [r for r in rows({"base": {"p0": (5, 0, 0), "p1": (7, 0, 0)},
                                "sft": {"p0": (4, 0, 0), "p1": (6, 0, 0)}})
               if r["option"] == "a"]
    store(engine, tmp_path, records)
    document = json.loads(analyze(engine).to_json())
    task = one(document)
    assert task["n_options"] == 1 and task["nucleation_ratio"] is None
    assert task["heldout"]["nucleation_ratio"] is None
    undefined = {p["metric"]: p["message"] for p in kinds_of(document, "fam")["undefined_value"]}
    assert "single option" in undefined["nucleation_ratio"]
    assert "heldout_nucleation_ratio" in undefined


def test_holes_at_intermediate_checkpoints_are_named(engine, tmp_path):
    checkpoints = [("base", None), ("sft", 100), ("sft", 200), ("sft", 300), ("sft", None)]
    records = []
    for stage, step in checkpoints:
        for prompt, vector in {"p0": (6, 3, 1), "p1": (2, 7, 1), "p2": (4, 4, 2)}.items():
            if (step, prompt) == (200, "p1"):
                continue  # the hole
            for option, count in zip(OPTIONS, vector):
                records.append({"family": "fam", "stage": stage, "stage_order": ORDERS[stage],
                                "step": step, "model": f"fam-{stage}-{step}", "task": TASK,
                                "prompt": prompt, "option": option, "count": count})
    store(engine, tmp_path, records)
    document = json.loads(analyze(engine).to_json())
    (hole,) = kinds_of(document, "fam")["trajectory_hole"]
    assert (hole["stage"], hole["step"], hole["prompts"]) == ("sft", 200, ["p1"])


# ----- 5. a store where every answer is invalid ------------------------------------------------


def test_a_store_without_a_valid_answer_analyzes_to_problems(engine, tmp_path):
    records = [
        {"family": "tiny", "stage": stage, "model": f"tiny-{stage}", "task": "digit",
         "prompt": prompt, "completions": [" "] * 5}
        for stage in ("base", "sft") for prompt in ("plain", "terse")
    ]
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    import_completions(engine, path)
    document = json.loads(analyze(engine).to_json())
    task = one(document, family="tiny", task="digit")
    assert task["status"] == "too_few_samples"
    assert task["validity"] == {"base": 0.0, "sft": 0.0}
    kinds = {(p["kind"], p["stage"]) for p in document["problems"]}
    assert ("no_valid_samples", "base") in kinds and ("no_valid_samples", "sft") in kinds


# ----- 6. verdicts carry their bootstrap support ------------------------------------------------

REPLICATES = 1000
# Base and SFT are point masses (every replicate redraws them unchanged); DPO's p1 gives a
# with probability 17/20, so a replicate's ProbMass[dpo] = (1 + k/20) / 2 with
# k ~ Binomial(20, 17/20), and "settled" (ProbMass[dpo] >= 1 - 0.12) holds iff k >= 16.
UNSETTLED = {"base": {"p0": (20, 0, 0), "p1": (0, 20, 0)},
             "sft": {"p0": (20, 0, 0), "p1": (20, 0, 0)},
             "dpo": {"p0": (20, 0, 0), "p1": (17, 3, 0)}}
SETTLED_CHANCE = sum(Fraction(comb(20, k)) * Fraction(17, 20) ** k * Fraction(3, 20) ** (20 - k)
                     for k in range(16, 21))
SIGNIFICANCE = 0.001  # of the binomial test of the observed support


def test_a_verdict_below_its_support_threshold_reads_uncertain(engine, tmp_path):
    store(engine, tmp_path, rows(UNSETTLED))
    options = AnalysisOptions(bootstrap=REPLICATES, seed=5, settle_tolerance=0.12)
    result = analyze(engine, options=options)
    task = one(json.loads(result.to_json()))
    assert task["verdict_point"] == {"liquid": True, "nucleated": True, "settled": {"dpo": True}}
    support = task["verdict_support"]
    assert support["liquid"] == 1.0 and support["nucleated"] == 1.0
    settled = support["settled"]["dpo"]
    assert binomtest(round(settled * REPLICATES), REPLICATES,
                     float(SETTLED_CHANCE)).pvalue > SIGNIFICANCE
    assert float(SETTLED_CHANCE) < 0.95  # so the verdict is uncertain at the default
    assert task["verdict"] == {"liquid": True, "nucleated": True, "settled": {"dpo": "uncertain"}}
    assert result.thresholds["verdict_support"] == 0.95
    (stage,) = result.stages.filter(pl.col("stage") == "dpo").iter_rows(named=True)
    assert stage["settled_verdict"] == "uncertain" and stage["settled_support"] == settled
    assert f"dpo uncertain ({settled:.0%} of replicates)" in to_table(result)

    lenient = analyze(engine, options=AnalysisOptions(
        bootstrap=REPLICATES, seed=5, settle_tolerance=0.12, verdict_support=0.5))
    assert one(lenient.to_dict())["verdict"]["settled"] == {"dpo": True}
    without = one(analyze(engine, options=AnalysisOptions(settle_tolerance=0.12)).to_dict())
    assert without["verdict"]["settled"] == {"dpo": True} and without["verdict_support"] is None


def test_the_report_shows_uncertainty_problems_and_plain_thresholds(engine, tmp_path):
    store(engine, tmp_path, rows(UNSETTLED) + rows({"base": UNSETTLED["base"],
                                                   "sft": {"p0": (20, 0, 0)}}, family="short"))
    options = AnalysisOptions(bootstrap=200, settle_tolerance=0.12)
    html = write_report(analyze(engine, options=options), tmp_path / "report").path.read_text()
    assert 'class="uncertain">dpo: uncertain' in html
    assert "share of bootstrap replicates" in html
    assert "False" not in html and "True" not in html  # the threshold table says yes / no
    assert '<td class="num">no</td>' in html  # trajectories: no
    assert "stage dpo, sampled for other families of this task, was not sampled" in html
    assert "not contain" in html or "sampling spread" in html  # the interval caption


def test_the_stage_distribution_legend_fits_inside_a_narrow_figure(engine, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from analysis import plots

    store(engine, tmp_path, rows({"base": UNSETTLED["base"], "sft": UNSETTLED["sft"]}))
    groups = analyze(engine).groups
    with plots.style():
        figure = plots.stage_distributions_figure(groups, plots.family_colors(["fam"]))
        renderer = FigureCanvasAgg(figure).get_renderer()
        (legend,) = figure.legends
        box = legend.get_window_extent(renderer)
        assert len(legend.get_texts()) == 3
        assert 0 <= box.x0 and box.x1 <= figure.bbox.x1
        panels = [ax.get_position().width * figure.get_size_inches()[0] for ax in figure.axes]
        assert min(panels) == pytest.approx(1.6)  # the panels kept their size
