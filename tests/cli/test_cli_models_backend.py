"""``catalog models add --backend NAME --backend-arg KEY=VALUE``, ``models list`` and
``models load`` with backends. Bad input is one ``Error:`` line, exit code 1, store intact."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from catalog import db as catalog_db
from catalog.cli import main
from catalog.schema import Model
from table_workers import DIGIT_TABLE


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def stored(url: str) -> list[tuple]:
    engine = catalog_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                select(Model.name, Model.backend, Model.backend_options).order_by(Model.id)
            )]
    finally:
        engine.dispose()


def add(db_url, name, *args):
    return run("models", "add", name, "--family", "fam", "--stage", "sft", "--source",
               f"org/{name}", "--db", db_url, *args)


def assert_one_error_line(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_models_add_stores_the_backend_and_its_converted_options(db_url):
    result = add(db_url, "m-sft", "--backend", "vllm", "--backend-arg",
                 "gpu_memory_utilization=0.85", "--backend-arg", "enforce_eager=true")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("from org/m-sft (vllm)")
    assert stored(db_url) == [
        ("m-sft", "vllm", {"gpu_memory_utilization": 0.85, "enforce_eager": True})
    ]
    listed = run("models", "list", "--db", db_url)
    assert listed.exit_code == 0 and "backend" in listed.output and "vllm" in listed.output


def test_models_add_defaults_to_the_transformers_backend(db_url):
    assert add(db_url, "m-sft").exit_code == 0
    assert stored(db_url) == [("m-sft", "transformers", {})]


def test_an_unknown_backend_or_a_bad_option_leaves_the_store_as_it_was(db_url):
    assert_one_error_line(
        add(db_url, "m-sft", "--backend", "hub"),
        "model 'm-sft': unknown backend 'hub'; registered backends: openai, table, transformers, vllm",
    )
    assert_one_error_line(
        add(db_url, "m-sft", "--backend", "vllm", "--backend-arg", "tensor_parallel_size=0"),
        "backend option tensor_parallel_size='0' is invalid: use an integer >= 1",
    )
    assert_one_error_line(
        add(db_url, "m-sft", "--backend", "vllm", "--backend-arg", "swap_space=4"),
        "backend 'vllm' has no option swap_space; its options: ",
    )
    assert stored(db_url) == []


def test_a_backend_arg_must_be_key_equals_value(db_url):
    for bad in ("enforce_eager", "=true"):
        result = add(db_url, "m-sft", "--backend", "vllm", "--backend-arg", bad)
        assert result.exit_code == 2 and "is not KEY=VALUE" in result.output, result.output
    result = add(db_url, "m-sft", "--backend", "vllm", "--backend-arg", "enforce_eager=true",
                 "--backend-arg", "enforce_eager=false")
    assert result.exit_code == 2 and "enforce_eager is given twice" in result.output
    assert stored(db_url) == []


def test_models_load_checks_the_backend_options_of_an_experiment_file(db_url, tmp_path):
    path = tmp_path / "fam.toml"
    path.write_text('[[families]]\nname = "fam"\n\n  [[families.stages]]\n  stage = "sft"\n'
                    '  source = "org/sft"\n  backend = "vllm"\n'
                    '  backend_options = { tensor_parallel_size = "two" }\n')
    assert_one_error_line(run("models", "load", path, "--db", db_url),
                          "tensor_parallel_size='two' is invalid: use an integer >= 1")
    assert stored(db_url) == []
    path.write_text(path.read_text().replace('"two"', "2"))
    assert run("models", "load", path, "--db", db_url).exit_code == 0
    assert stored(db_url) == [("org/sft", "vllm", {"tensor_parallel_size": 2})]


def test_plan_with_an_experiment_file_checks_its_backend_options(db_url, tmp_path):
    """`catalog plan --experiment` registers the file's models as `models load` does: a
    backend option the backend does not take is refused, and nothing is stored."""
    table = tmp_path / "table.json"
    table.write_text(json.dumps(DIGIT_TABLE))
    path = tmp_path / "fam.toml"
    path.write_text('[[families]]\nname = "fam"\n\n  [[families.stages]]\n  stage = "sft"\n'
                    f'  name = "m-sft"\n  source = "{table}"\n  backend = "table"\n'
                    '  backend_options = { no_such_option = 3 }\n\n'
                    '[plan]\ntasks = ["digit"]\n')
    assert_one_error_line(run("plan", "--experiment", path, "--db", db_url),
                          "backend 'table' has no option no_such_option")
    assert stored(db_url) == []
    path.write_text(path.read_text().replace("no_such_option = 3", "units_per_call = 2"))
    planned = run("plan", "--experiment", path, "--db", db_url)
    assert planned.exit_code == 0, planned.output
    assert stored(db_url) == [("m-sft", "table", {"units_per_call": 2})]
