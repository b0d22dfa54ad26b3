"""A worker sampling a real tiny transformers model as forests (units_per_call > 1).

(Apart from test_forest.py, whose ``backend`` fixture would shadow the database one.)"""

from __future__ import annotations

from tiny_models import cached_tiny_model


def test_a_worker_samples_a_forest_and_stores_one_at_a_time_counts(engine, tmp_path_factory):
    """The job layer end to end: a tiny transformers model with units_per_call=3 samples
    its 5 units as forests of 3 + 2, and stores the counts a one-unit worker stores (the
    same model in another database)."""
    from catalog.db import open_catalog, session_scope
    from catalog.registry import add_model
    from ingest.backends import check_backend_options
    from ingest.worker import run_worker
    from table_workers import counts, plan_grid

    path = cached_tiny_model(tmp_path_factory, train_steps=80)
    prompts = ("plain", "terse", "polite", "only", "answer")
    alone = open_catalog(f"sqlite:///{tmp_path_factory.mktemp('alone') / 'c.db'}")
    for catalog, per_call in ((engine, 3), (alone, 1)):
        with session_scope(catalog) as session:
            add_model(session, name="tiny", family="fam", stage="sft", source=str(path),
                      backend="transformers", prompt_format="chat",
                      backend_options={"units_per_call": per_call},
                      check_backend=check_backend_options)
        plan_grid(catalog, ["tiny"], prompts=prompts, n=300, seed=3)
        assert run_worker(catalog).done == 5
    assert counts(engine) == counts(alone) and len(counts(engine)) >= 5
    alone.dispose()
