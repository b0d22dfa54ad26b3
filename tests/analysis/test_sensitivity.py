"""The analysis under the strict and the lenient reading of the stored completions
(analysis/sensitivity.py), on SQLite and PostgreSQL, with table-backend models."""

from __future__ import annotations

import polars as pl

from analysis.frames import read_counts
from analysis.sensitivity import sensitivity
from ingest.worker import run_worker
from table_workers import plan_grid, table_models

TABLE = {"default": {"7": 0.5, "3 or 4": 0.3, "banana": 0.2}, "prompts": {}}


def test_strict_and_lenient_readings_of_the_same_completions(engine, tmp_path):
    table_models(engine, tmp_path, ["m-base", "m-sft"], table=TABLE)
    plan_grid(engine, ["m-base", "m-sft"], prompts=("plain", "terse"), n=400)
    run_worker(engine)
    frame = sensitivity(engine, read_counts(engine))
    validity = frame.filter(pl.col("metric") == "validity", pl.col("stage") == "base")
    strict, lenient = float(validity["strict"].item()), float(validity["lenient"].item())
    assert strict < lenient  # the echo "3 or 4" counts only under the lenient reading
    # exact fractions of the base model's own samples, read from the store
    with engine.connect() as conn:
        base = {text: int(n) for text, n in conn.exec_driver_sql(
            "SELECT c.text, SUM(c.count) FROM completions c JOIN runs r ON r.id = c.run_id "
            "JOIN models m ON m.id = r.model_id WHERE m.name = 'm-base' GROUP BY c.text").all()}
    n = sum(base.values())
    assert abs(strict - base["7"] / n) < 1e-4
    assert abs(lenient - (base["7"] + base["3 or 4"]) / n) < 1e-4
    assert set(frame["metric"]) >= {"validity", "liquidity", "nucleation_ratio", "seed_prompt"}


def test_the_report_shows_validity_reasons_and_both_readings(engine, tmp_path):
    from analysis.report import build_report

    table_models(engine, tmp_path, ["m-base", "m-sft"], table=TABLE)
    plan_grid(engine, ["m-base", "m-sft"], prompts=("plain", "terse"), n=200)
    run_worker(engine)
    html = build_report(engine, tmp_path / "report").path.read_text(encoding="utf-8")
    assert 'id="validity"' in html and "How much the conclusions depend on parsing" in html
    section = html[html.index('id="validity"'):]
    assert "m-base" in section and "no answer" in section
