"""The planted test on SQLite and PostgreSQL: counts where SFT, DPO and RL are drawn from one
chosen base prompt, written through the import path; the analysis finds that prompt and the
liquid / nucleated / settled verdicts, with the same numbers on both databases."""

import polars as pl
import pytest

from analysis.crystallization import AnalysisOptions, analyze, analyze_data
from analysis.frames import counts_from_frame
from catalog.db import open_catalog
from catalog.imports import import_counts
from catalog.toylab.synthetic import planted_counts

PLANTED = {("olmo", "pick_digit"): 7, ("olmo", "pick_color"): 2, ("tulu", "pick_digit"): 4,
           ("tulu", "pick_color"): 9}
OPTIONS = AnalysisOptions(bootstrap=40, seed=2024)


@pytest.fixture(scope="module")
def planted():
    frame, seeds = planted_counts(
        families=("olmo", "tulu"), tasks=("pick_digit", "pick_color"), n_prompts=12,
        n_options=10, n_samples=300, seed_prompts=PLANTED, random_seed=99,
    )
    assert seeds == PLANTED
    return frame


def _store(url: str, frame: pl.DataFrame, path) -> dict:
    engine = open_catalog(url)
    try:
        frame.drop("prompt_id").write_parquet(path)  # prompt ids come from the file order
        import_counts(engine, path)
        return analyze(engine, options=OPTIONS).to_dict()
    finally:
        engine.dispose()


def test_planted_seed_is_found_in_the_store(db_url, planted, tmp_path):
    document = _store(db_url, planted, tmp_path / "planted.parquet")
    assert len(document["tasks"]) == 4
    for task in document["tasks"]:
        key = (task["family"], task["task"])
        assert task["status"] == "ok", task["problems"]
        assert task["seed_prompt_id"] == PLANTED[key]
        assert task["seed_prompt"] == f"p{PLANTED[key]:03d}"
        assert task["verdict"] == {
            "liquid": True, "nucleated": True, "settled": {"dpo": True, "rl": True}
        }
        assert task["seed_stability"] >= 0.9
    # The store gives exactly the numbers of the same counts analyzed in memory.
    in_memory = analyze_data(counts_from_frame(planted), OPTIONS).to_dict()
    assert {"validity"} | set(in_memory) == set(document)  # the store also knows validity
    assert {key: document[key] for key in in_memory} == in_memory


def test_sqlite_and_postgresql_give_the_same_numbers(postgres, migrated_templates, planted, tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'planted.db'}"
    pg_url = postgres.create(template=migrated_templates["postgresql"])
    try:
        on_sqlite = _store(sqlite_url, planted, tmp_path / "a.parquet")
        on_postgres = _store(pg_url, planted, tmp_path / "b.parquet")
    finally:
        postgres.drop(pg_url)
    assert on_sqlite == on_postgres
    assert on_sqlite["tasks"][0]["ci"] is not None
