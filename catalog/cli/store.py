"""Commands over the stored counts: ``import-counts``, ``import-completions``, ``export``
and ``sql``."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from catalog.cli import types
from catalog.cli.common import catalog_engine, db_option
from catalog.enums import COUNT_FILE_FORMATS, IMPORT_PRESETS, RUN_MODES


def echo_frame(frame, fmt: str = "table") -> None:
    """Print a Polars frame whole: a Markdown table, or CSV."""
    import polars as pl

    if fmt == "csv":
        click.echo(_csv_writable(frame).write_csv(), nl=False)
        return
    with pl.Config(
        tbl_formatting="ASCII_MARKDOWN",
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=1000,
        fmt_str_lengths=200,
    ):
        click.echo(frame)


def _csv_writable(frame):
    """The frame with the columns CSV cannot hold (durations, lists, bytes...) as text."""
    import polars as pl

    def text(name: str, dtype) -> pl.Expr:
        if isinstance(dtype, pl.Duration):
            return pl.col(name).dt.to_string("polars")  # as the table prints it
        if isinstance(dtype, pl.Binary):
            return pl.col(name).bin.encode("hex")
        return pl.col(name).map_elements(str, return_dtype=pl.String, skip_nulls=True)

    scalar = (pl.String, pl.Boolean, pl.Date, pl.Datetime, pl.Time, pl.Decimal, pl.Null)
    with warnings.catch_warnings():  # Polars' advice to vectorize str() does not apply here
        warnings.simplefilter("ignore", pl.exceptions.PolarsInefficientMapWarning)
        return frame.with_columns(
            text(name, dtype) for name, dtype in frame.schema.items()
            if not (dtype.is_numeric() or isinstance(dtype, scalar))
        )


def _field_map(maps, sets):
    """The --map and --set options; a malformed one is a usage error."""
    from catalog.errors import InvalidInput
    from catalog.records import FieldMap

    try:
        return FieldMap.parse(maps, sets)
    except InvalidInput as exc:
        raise click.UsageError(str(exc)) from None


def field_options(command):
    """``--map FIELD=COLUMN`` and ``--set COLUMN=VALUE`` of the imports."""
    command = click.option(
        "--set", "sets", multiple=True, metavar="COLUMN=VALUE",
        help="Give every record this value (repeatable), e.g. --set family=olmo.")(command)
    return click.option(
        "--map", "maps", multiple=True, metavar="FIELD=COLUMN",
        help="Read the file's FIELD as COLUMN (repeatable), e.g. --map n=count.",
    )(command)


@click.command("import-counts")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@field_options
@db_option
def import_counts_command(path: Path, maps, sets, db_url: str | None) -> None:
    """Import option counts sampled elsewhere from a CSV or Parquet file.

    Columns: family, stage, model, task, prompt, option, count (required); stage_order,
    step, prompt_text, prompt_position (a new prompt key's id; else new keys are numbered
    in key order), n_invalid and the condition: temperature, top_p, top_k,
    max_new_tokens, scaffold (optional). Unknown tasks become open tasks, unknown models
    are registered. Importing a file again replaces its counts; a bad row stores nothing.

    Example: catalog import-counts counts.csv --db postgresql://postgres@127.0.0.1/catalog
    """
    from catalog.imports import import_counts

    fields = _field_map(maps, sets)
    with catalog_engine(db_url) as engine:
        click.echo(import_counts(engine, path, fields=fields))


@click.command("import-completions")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(IMPORT_PRESETS), default=None,
              help='Fields of another tool\'s output: vllm = {"prompt": ..., "outputs": [...]} '
              "lines (--map prompt=prompt_text --map outputs=completions); lm-eval = "
              "lm-evaluation-harness --log_samples JSONL (generate_until tasks); inspect = "
              "an inspect_ai eval log (.eval or .json).")
@field_options
@db_option
def import_completions_command(path: Path, preset, maps, sets, db_url: str | None) -> None:
    """Import raw generations (JSONL, CSV or Parquet), normalized by each task's normalizer.

    One record per generation (completion, optional count) or per prompt (completions: a
    list of texts). Also required: family, stage, model, task, prompt (or prompt_text);
    optional: stage_order, step, prompt_position and the condition columns, as
    import-counts. Importing a
    file again replaces its runs; a bad record stores nothing.

    Example: catalog import-completions vllm_out.jsonl --preset vllm --set family=olmo
    --set stage=base --set model=olmo-base --set task=digit

    Example: catalog import-completions samples_digit_2026-01-05.jsonl --preset lm-eval
    --set family=olmo --set stage=sft --set model=olmo-sft --set task=digit
    """
    from catalog.imports import import_completions

    fields = _field_map(maps, sets)
    with catalog_engine(db_url) as engine:
        click.echo(import_completions(engine, path, fields=fields, preset=preset))


@click.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(COUNT_FILE_FORMATS), default=None,
              help="File format (default: from the file name's suffix).")
@click.option("--family", "families", multiple=True, metavar="F", help="Only this family (repeatable).")
@click.option("--task", "tasks", multiple=True, metavar="T", help="Only this task (repeatable).")
@click.option("--mode", type=click.Choice(RUN_MODES), default="sampled", show_default=True,
              help="Sampled counts (importable) or exact probabilities.")
@db_option
def export_command(path: Path, fmt, families, tasks, mode, db_url: str | None) -> None:
    """Export counts in the import-counts format (CSV or Parquet).

    Example: catalog export olmo.parquet --family olmo-2-1124-7b --task digit --task coin
    """
    from catalog.export import export_counts

    with catalog_engine(db_url, read_only=True) as engine:
        rows = export_counts(
            engine, path, format=fmt, family=families or None, task=tasks or None, mode=mode
        )
    click.echo(f"wrote {rows:,} rows to {path}")


@click.command("sql")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table",
              show_default=True)
@click.option("--timeout", type=types.FiniteFloat(above=0, at_most=86_400), default=300.0,
              show_default=True, metavar="SECONDS",
              help="Stop the query after this long (the server stops it too).")
@db_option
def sql_command(sql: str, fmt: str, timeout: float, db_url: str | None) -> None:
    """Run one read-only SQL query and print its result (views: v_counts, v_distributions,
    v_runs). A statement that tries to write is refused and changes nothing; Ctrl-C or
    --timeout stops the query, on the server too.

    Example: catalog sql "SELECT model, option, probability FROM v_distributions WHERE task = 'coin'"
    """
    from catalog.views import query

    with catalog_engine(db_url, read_only=True) as engine:
        frame = query(engine, sql, timeout=timeout)
    echo_frame(frame, fmt)


COMMANDS = [import_counts_command, import_completions_command, export_command, sql_command]
