"""``catalog ingest`` end to end through the CLI, with a real (tiny) transformers model (and a
table model where a unit must fail).

The model is built and saved in the test and loaded back through the same code path as a
hub model; nothing is downloaded. Bad input gives one ``Error:`` line, exit code 1, and
leaves the store as it was.
"""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest
from sqlalchemy import text

from catalog.cli import main
from catalog.normalize import normalize
from catalog.tasks import bundled_task
from catalog.views import read_view
from ingest.backends import ModelSpec, load_backend
from ingest.exact import default_surface_forms
from table_workers import table_models
from tiny_models import cached_tiny_model, pickle_copy

# How often the tiny model answers these (untrained) prompts validly is whatever training
# gave; valid counts are checked against the model's exact probability of its valid
# answers, one-sided binomial tests at the 1% level overall (fixed seed).
SIGNIFICANCE = 0.01


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory, train_steps=60)


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def store_size(engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
            for table in ("models", "runs", "completions", "option_counts")
        )


def add_model(db_url: str, name: str, source: str, *extra: str):
    result = invoke("models", "add", name, "--family", "tiny", "--stage", "sft",
                    "--source", source, "--db", db_url, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_ingest_a_local_model_into_the_store(db_url, engine, tiny_model):
    add_model(db_url, "tiny-sft", str(tiny_model))
    args = ["ingest", "--model", "tiny-sft", "--task", "digit,coin", "--prompt", "plain",
            "--prompt", "polite", "--samples", "200", "--seed", "3", "--max-new-tokens", "6",
            "--db", db_url]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "4 units sampled (800 samples)" in first.output

    runs = read_view(engine, "v_runs", model="tiny-sft")
    assert runs.height == 4
    assert (runs["n_valid"] + runs["n_invalid"]).to_list() == [200] * 4
    dist = read_view(engine, "v_distributions", model="tiny-sft")
    sums = dist.group_by("task", "prompt").agg(pl.col("probability").sum().alias("total"))
    assert sums["total"].to_list() == pytest.approx([1.0] * sums.height)
    # a distribution for exactly the units with a valid sample
    assert set(sums.select("task", "prompt").iter_rows()) == {
        (r["task"], r["prompt"]) for r in runs.iter_rows(named=True) if r["n_valid"] > 0
    }
    # Each valid count is plausible given the model: an answer that is exactly one of the
    # option's surface forms, then EOS, is valid, so P(valid) >= exact covered mass.
    backend = load_backend(ModelSpec(str(tiny_model)), device="cpu")
    for run in runs.iter_rows(named=True):
        task = bundled_task(run["task"])
        forms = default_surface_forms(task.options, task.aliases)
        assert all(normalize(task, f) == o for o, fs in forms.items() for f in fs)
        rendered = backend.render(run["prompt_text"], "chat")
        covered = backend.option_probabilities(rendered, forms).covered_mass
        low = binomtest(run["n_valid"], 200, covered, alternative="less").pvalue
        assert low > SIGNIFICANCE / runs.height, (run["task"], run["prompt"], covered, run)
    with engine.connect() as conn:
        runs = conn.execute(text(
            "SELECT dtype, device, model_revision, chat_template_hash, rendered_prompt, "
            "n_samples, seed, library_versions FROM runs"
        )).all()
        completions = conn.execute(text("SELECT SUM(count) FROM completions")).scalar()
    assert completions == 800
    for run in runs:
        assert (run.dtype, run.device, run.n_samples, run.seed) == ("float32", "cpu", 200, 3)
        assert run.model_revision and run.chat_template_hash
        assert run.rendered_prompt.startswith("<|im_start|>user\n")

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "0 units sampled" in again.output and "4 of 4 were already done" in again.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT SUM(count) FROM completions")).scalar() == 800


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope", "--task", "digit"], "no model named 'nope'"),
        (["--model", "tiny-sft", "--task", "nope"], "no task named 'nope'"),
        (["--model", "tiny-sft", "--task", "digit", "--samples", "0"], "must be >= 1"),
        (["--model", "tiny-sft", "--task", "digit", "--temperature", "0"], "--temperature"),
        (["--model", "tiny-sft", "--task", "animal", "--mode", "exact"], "closed task"),
    ],
)
def test_bad_requests_fail_with_one_line_and_leave_the_store(
    db_url, engine, tiny_model, args, message
):
    add_model(db_url, "tiny-sft", str(tiny_model))
    before = store_size(engine)
    result = invoke("ingest", *args, "--db", db_url)
    usage = "--samples" in args or "--temperature" in args  # refused by click's types: exit 2
    assert result.exit_code == (2 if usage else 1)
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: ") and message in error
    assert usage or result.stderr.count("\n") == 1
    assert store_size(engine) == before


def test_a_directory_without_weights_is_refused(db_url, engine, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    add_model(db_url, "empty-sft", str(empty))
    before = store_size(engine)
    result = invoke("ingest", "--model", "empty-sft", "--task", "digit", "--db", db_url)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and "weights" in result.stderr
    assert store_size(engine) == before


def test_pickle_weights_need_the_flag(db_url, engine, tiny_model, tmp_path):
    pickled = pickle_copy(tiny_model, tmp_path / "pickled")
    add_model(db_url, "pickled-sft", str(pickled))
    before = store_size(engine)
    refused = invoke("ingest", "--model", "pickled-sft", "--task", "coin", "--prompt", "plain",
                     "--samples", "20", "--db", db_url)
    assert refused.exit_code == 1
    assert "--allow-pickle" in refused.stderr
    assert store_size(engine) == before
    allowed = invoke("ingest", "--model", "pickled-sft", "--task", "coin", "--prompt", "plain",
                     "--samples", "20", "--max-new-tokens", "4", "--allow-pickle", "--db", db_url)
    assert allowed.exit_code == 0, allowed.output
    assert "1 units sampled" in allowed.output


def test_remote_code_needs_a_pinned_revision(db_url, engine):
    before = store_size(engine)
    result = invoke("models", "add", "remote", "--family", "f", "--stage", "sft", "--source",
                    "some-org/custom-model", "--trust-remote-code", "--db", db_url)
    assert result.exit_code == 1
    assert "revision" in result.stderr and "40" in result.stderr
    assert store_size(engine) == before


def test_an_unknown_hub_model_fails_clearly_offline(db_url, engine, monkeypatch):
    # The hub code path is real; offline mode keeps the test from touching the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_model(db_url, "ghost-sft", "no-such-org/no-such-model")
    before = store_size(engine)
    result = invoke("ingest", "--model", "ghost-sft", "--task", "coin", "--db", db_url)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "no-such-org/no-such-model" in result.stderr
    assert store_size(engine) == before


def test_exact_mode_with_a_real_model_on_chat_and_plain_stages(db_url, engine, tiny_model):
    add_model(db_url, "tiny-sft", str(tiny_model))
    base = invoke("models", "add", "tiny-base", "--family", "tiny", "--stage", "base",
                  "--source", str(tiny_model), "--plain", "--db", db_url)
    assert base.exit_code == 0, base.output
    result = invoke("ingest", "--family", "tiny", "--task", "coin", "--prompt", "plain",
                    "--mode", "exact", "--db", db_url)
    assert result.exit_code == 0, result.output
    dist = read_view(engine, "v_distributions", family="tiny")
    assert set(dist["mode"]) == {"exact"} and set(dist["option"]) == {"heads", "tails"}
    totals = dist.group_by("model").agg(pl.col("probability").sum())
    assert totals["probability"].to_list() == pytest.approx([1.0, 1.0])
    with engine.connect() as conn:
        masses = conn.execute(text("SELECT covered_mass FROM runs")).scalars().all()
        sampled = conn.execute(text("SELECT COUNT(*) FROM option_counts")).scalar()
    assert len(masses) == 2 and all(0 < m <= 1 for m in masses)
    assert sampled == 0  # exact probabilities never mix with sampled counts


def test_a_failing_unit_is_reported_as_it_fails(db_url, engine, tmp_path):
    """`catalog ingest` shows each failed attempt of a unit, with its error, when it
    happens (between the units sampled around it), then ends with one Error line."""
    texts = {p.key: p.text for p in bundled_task("digit").prompts}
    table_models(engine, tmp_path, ["m-a"], table={"prompts": {
        texts["plain"]: {"7": 1.0}, texts["polite"]: {"3": 1.0}}})
    result = invoke("ingest", "--model", "m-a", "--task", "digit", "--prompt", "plain",
                    "--prompt", "terse", "--prompt", "polite", "--samples", "20", "--db", db_url)
    assert result.exit_code == 1, result.output
    error = "table model has no distribution for prompt"
    lines = result.stderr.splitlines()
    attempts = [i for i, line in enumerate(lines) if line.startswith("m-a digit/terse: ")]
    assert [lines[i].split(": ")[1] for i in attempts] == ["will retry", "will retry", "failed"]
    assert all(error in lines[i] for i in attempts)
    # the first failure is shown before the unit sampled after it, not at the end
    polite = next(i for i, line in enumerate(lines) if "m-a digit/polite: 20 samples" in line)
    assert attempts[0] < polite
    assert lines[-1].startswith("Error: 1 units failed (first: m-a digit/terse: ")
    assert "2 units sampled (40 samples)" in result.stdout
