"""``catalog ingest --temperature 0.3,0.7,1.0`` (one set of units per value) and
``--scaffold``, through the CLI with table models (fixed answer distributions, no torch),
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from click.testing import CliRunner

from catalog.cli import main
from catalog.conditions import Condition
from catalog.prompting import render_plain
from catalog.views import read_view

DIGITS = {" 7": 0.5, " 3": 0.3, " 5": 0.2}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def family(db_url, tmp_path):
    """A base (plain) and an sft (chat) stage answering with DIGITS."""
    table = tmp_path / "digits.json"
    table.write_text(json.dumps({"default": DIGITS}))
    for stage in ("base", "sft"):
        result = run("models", "add", f"tab-{stage}", "--family", "tab", "--stage", stage,
                     "--source", table, "--backend", "table", "--db", db_url)
        assert result.exit_code == 0, result.output
    return "tab"


def entropy(probabilities) -> float:
    return -sum(p * math.log2(p) for p in probabilities if p)


def test_a_temperature_sweep_is_one_command_and_three_conditions(db_url, engine, family):
    result = run("ingest", "--family", family, "--task", "digit", "--prompt", "plain",
                 "--samples", "60", "--temperature", "0.3,0.7,1.0", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "6 units sampled (360 samples)" in result.output
    runs = read_view(engine, "v_runs")
    assert sorted(set(runs["temperature"])) == [0.3, 0.7, 1.0]
    assert runs["condition_key"].n_unique() == 3
    keys = {Condition.sampled(temperature=t, top_p=1.0, top_k=None, max_new_tokens=24,
                              scaffold="qa@1").key for t in (0.3, 0.7, 1.0)}
    assert set(runs["condition_key"]) == keys
    # base and sft of one temperature share its condition
    assert runs.group_by("condition_key").agg(pl.col("stage").sort())["stage"].to_list() == [
        ["base", "sft"]] * 3
    again = run("ingest", "--family", family, "--task", "digit", "--prompt", "plain",
                "--samples", "60", "--temperature", "0.3,0.7,1.0", "--db", db_url)
    assert "0 units sampled" in again.output and "6 of 6 were already done" in again.output
    analyzed = run("analyze", "--family", family, "--task", "digit", "--format", "json",
                   "--db", db_url)
    assert analyzed.exit_code == 0, analyzed.output


def test_conditions_are_never_pooled_and_seeds_of_one_are(db_url, engine, family):
    for args in (["--temperature", "0.5", "--seed", "1"], ["--temperature", "0.5", "--seed", "2"],
                 ["--temperature", "1.5", "--seed", "1"]):
        result = run("ingest", "--model", "tab-base", "--task", "digit", "--prompt", "plain",
                     "--samples", "80", *args, "--db", db_url)
        assert result.exit_code == 0, result.output
    counts = read_view(engine, "v_counts")
    dist = read_view(engine, "v_distributions")
    assert dist["condition_key"].n_unique() == 2
    for (key,), rows in dist.group_by("condition_key"):
        own = counts.filter(condition_key=key).group_by("option").agg(pl.col("count").sum())
        total = own["count"].sum()
        # the condition's runs alone: two seeds (160 samples) at T=0.5, one at T=1.5
        assert total == (160 if rows["temperature"][0] == 0.5 else 80)
        assert entropy(rows["probability"]) == pytest.approx(entropy(own["count"] / total))
        assert rows.sort("option")["count"].to_list() == own.sort("option")["count"].to_list()


def test_a_scaffold_is_part_of_the_condition(db_url, engine, family, tmp_path):
    args = ["ingest", "--family", family, "--task", "digit", "--prompt", "plain", "--samples",
            "20", "--db", db_url]
    assert run(*args).exit_code == 0
    result = run(*args, "--scaffold", "fewshot")
    assert result.exit_code == 0, result.output
    assert "2 units sampled" in result.output  # the sft unit too: it is the fewshot condition's
    runs = read_view(engine, "v_runs")
    assert runs["condition_key"].n_unique() == 2
    with engine.connect() as conn:
        rendered = dict(conn.exec_driver_sql(
            "SELECT r.condition_key, r.rendered_prompt FROM runs r JOIN models m "
            "ON m.id = r.model_id WHERE m.stage = 'base'").all())
    fewshot = Condition.sampled(temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=24,
                                scaffold="fewshot@1").key
    text = "Pick a random digit from 0 to 9."
    assert rendered[fewshot] == render_plain(text, "fewshot@1")
    assert set(rendered.values()) == {render_plain(text), render_plain(text, "fewshot@1")}
    bad = run(*args, "--scaffold", "chatty")
    assert bad.exit_code == 1 and bad.output.startswith("Error: unknown scaffold 'chatty'")


def test_a_task_file_chooses_its_scaffold(db_url, engine, family, tmp_path):
    path = tmp_path / "pick.toml"
    path.write_text('name = "pick"\nkind = "closed"\noptions = ["3", "5", "7"]\n'
                    'normalizer = "choice"\nscaffold = "fewshot"\n'
                    '[[prompts]]\nkey = "p"\ntext = "Pick 3, 5 or 7."\n')
    assert run("tasks", "add", path, "--db", db_url).exit_code == 0
    assert "base-stage scaffold: fewshot@1\n" in run("tasks", "show", "pick", "--db", db_url).output
    assert "base-stage scaffold: qa@1 (default)" in run("tasks", "show", "coin", "--db", db_url).output
    result = run("ingest", "--model", "tab-base", "--task", "pick", "--samples", "10",
                 "--db", db_url)
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        condition, rendered = conn.exec_driver_sql(
            "SELECT condition, rendered_prompt FROM runs").one()
    condition = condition if isinstance(condition, dict) else json.loads(condition)
    assert condition["scaffold"] == "fewshot@1"
    assert rendered == render_plain("Pick 3, 5 or 7.", "fewshot")


def test_bad_sweep_values_are_usage_errors(db_url, family):
    result = run("ingest", "--family", family, "--task", "digit", "--temperature", "0.3,hot",
                 "--db", db_url)
    assert result.exit_code == 2 and "--temperature: 'hot' is not a number" in result.output
    result = run("ingest", "--family", family, "--task", "digit", "--top-p", "0.5,2",
                 "--db", db_url)
    assert result.exit_code == 2 and "--top-p: must be <= 1, got 2.0" in result.output
