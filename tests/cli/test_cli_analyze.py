"""`catalog analyze` through click's CliRunner, on SQLite and PostgreSQL."""

import io
import json

import polars as pl
import pytest
from click.testing import CliRunner

from analysis.crystallization import AnalysisOptions, analyze
from catalog.cli import main
from catalog.db import open_catalog
from catalog.imports import import_counts
from catalog.toylab.synthetic import planted_counts

SEEDS = {("fam_a", "pick"): 3, ("fam_b", "pick"): 5}


@pytest.fixture
def stored(db_url, tmp_path):
    frame, _ = planted_counts(
        families=("fam_a", "fam_b"), tasks=("pick",), n_prompts=8, n_options=6,
        n_samples=200, seed_prompts=SEEDS, random_seed=4,
    )
    path = tmp_path / "counts.csv"
    frame.drop("prompt_id").write_csv(path)
    engine = open_catalog(db_url)
    import_counts(engine, path)
    engine.dispose()
    return db_url


def run(*args):
    result = CliRunner().invoke(main, ["analyze", *args])
    return result


def test_json_output_has_the_contract_keys(stored):
    result = run("--db", stored, "--format", "json", "--bootstrap", "20", "--seed", "5")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"thresholds", "problems", "tasks", "cross_family", "validity"}
    # imported counts: valid rates known, the reasons of invalid samples not
    assert all(0 < row["valid_rate"] <= 1 and row["no_answer_rate"] is None
               for row in document["validity"])
    assert document["thresholds"]["bootstrap"] == 20 and document["thresholds"]["seed"] == 5
    seeds = {(t["family"], t["task"]): t["seed_prompt_id"] for t in document["tasks"]}
    assert seeds == SEEDS
    for task in document["tasks"]:
        assert {"stages", "nucleation_ratio", "heldout", "probmass_proxy", "ci"} <= set(task)
    assert {c["family_a"] for c in document["cross_family"]} == {"fam_a", "fam_b"}


def test_table_output_shows_seed_thresholds_and_verdicts(stored):
    result = run("--db", stored, "--family", "fam_a", "--tau", "0.8")
    assert result.exit_code == 0, result.output
    assert "thresholds: tau 0.8" in result.output
    assert "== fam_a / pick" in result.output
    assert "seed prompt: p003 (id 3)" in result.output
    # The verdicts at tau 0.8 are those the analysis gives the stored counts (whether a
    # random planting nucleates at the stricter support is up to its draw: over random
    # seeds about 7% of these plantings do not).
    engine = open_catalog(stored)
    try:
        task = analyze(engine, families=["fam_a"], options=AnalysisOptions(tau=0.8)).to_dict()
    finally:
        engine.dispose()
    verdict = task["tasks"][0]["verdict"]
    yes = {True: "yes", False: "no", None: "undefined"}
    settled = ", ".join(f"{stage} {yes[v]}" for stage, v in verdict["settled"].items())
    assert (f"verdict: liquid at base {yes[verdict['liquid']]}; nucleated at sft "
            f"{yes[verdict['nucleated']]}; settled {settled}") in result.output
    assert "fam_b" not in result.output


def test_csv_output_to_a_file(stored, tmp_path):
    target = tmp_path / "analysis.csv"
    result = run("--db", stored, "--format", "csv", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert str(target) in result.output
    frame = pl.read_csv(io.StringIO(target.read_text()))
    assert frame.height == 8  # 2 families x 4 stages
    assert set(frame["seed_prompt"].to_list()) == {"p003", "p005"}
    assert {"liquidity", "probmass", "mse_to_seed", "validity", "nucleated"} <= set(frame.columns)
    assert frame["thresholds_tau"].to_list() == [0.9] * 8


def test_thresholds_are_options(stored):
    result = run("--db", stored, "--format", "json", "--liquid-threshold", "0.99",
                 "--nr-threshold", "0.5", "--probmass-threshold", "0.7",
                 "--settle-tolerance", "0.2", "--min-samples", "3")
    assert result.exit_code == 0, result.output
    thresholds = json.loads(result.output)["thresholds"]
    assert thresholds["liquid_threshold"] == 0.99
    assert thresholds["nucleation_ratio_threshold"] == 0.5
    assert thresholds["probmass_threshold"] == 0.7
    assert thresholds["settle_tolerance"] == 0.2
    assert thresholds["min_samples"] == 3
    assert all(t["verdict"]["liquid"] is False for t in json.loads(result.output)["tasks"])


def test_an_empty_store_is_a_clear_error(db_url):
    result = run("--db", db_url)
    assert result.exit_code == 1
    assert "Error: the store has no done sampled runs to analyze" in result.output
    assert "catalog import-counts" in result.output


def test_an_unknown_family_is_a_clear_error(stored):
    result = run("--db", stored, "--family", "nobody")
    assert result.exit_code == 1
    assert "Error: no done sampled runs for family nobody; family names with sampled runs: fam_a, fam_b" in result.output


def test_bad_options_are_clear_errors(stored):
    result = run("--db", stored, "--tau", "1.5")
    assert result.exit_code == 2 and "--tau': must be <= 1, got 1.5" in result.output
    result = run("--db", stored, "--mode", "exact", "--bootstrap", "10")
    assert result.exit_code == 1 and "exact probabilities have no sampling noise" in result.output
    for share in ("0", "1.5", "nan"):
        result = run("--db", stored, "--verdict-support", share)
        assert result.exit_code == 1, share
        assert f"Error: verdict_support must be in (0, 1], got {float(share)}" in result.output
        assert "Traceback" not in result.output
    result = run("--db", stored, "--verdict-support", "some")
    assert result.exit_code == 2  # not a number: a usage error, from click
    result = run("--db", stored, "--format", "yaml")
    assert result.exit_code == 2  # a usage error, from click


def test_a_store_without_a_valid_answer_analyzes_to_problems(db_url, tmp_path):
    """Every answer a space (as a tiny plain model with --max-new-tokens 1 gives): no option
    counts at all; the JSON names the problems instead of failing."""
    from catalog.imports import import_completions

    records = [{"family": "tiny", "stage": stage, "model": f"tiny-{stage}", "task": "digit",
                "prompt": prompt, "completions": [" "] * 4}
               for stage in ("base", "sft") for prompt in ("plain", "terse", "polite")]
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    engine = open_catalog(db_url)
    import_completions(engine, path)
    engine.dispose()
    result = run("--db", db_url, "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the warnings go to standard error
    assert "Warning: tiny/digit: tiny-base (base) gave a valid answer in 0%" in result.stderr
    (task,) = document["tasks"]
    assert task["status"] == "too_few_samples" and task["n_options"] == 10
    low = {p["stage"] for p in document["problems"] if p["kind"] == "low_validity"}
    assert low == {"base", "sft"}
    no_valid = [p for p in document["problems"] if p["kind"] == "no_valid_samples"]
    assert {(p["stage"], tuple(p["prompts"])) for p in no_valid} == {
        ("base", ("plain", "terse", "polite")), ("sft", ("plain", "terse", "polite"))}  # id order
    table = run("--db", db_url)
    assert table.exit_code == 0 and "excluded for having no valid sample" in table.output
