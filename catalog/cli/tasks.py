"""``catalog tasks``: the bundled task suite and the tasks stored in the catalog, and
``catalog renormalize``: stored runs' counts re-derived after a task changed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
from sqlalchemy import select

from catalog import registry
from catalog.cli.common import catalog_engine, catalog_session, db_option
from catalog.errors import NoCatalog
from catalog.prompting import DEFAULT_SCAFFOLD
from catalog.cli.store import echo_frame
from catalog.schema import Task
from catalog.tasks import bundled_task, bundled_tasks, load_task_file


@click.group("tasks")
def tasks_group() -> None:
    """List, show and add random-generation tasks."""


@contextlib.contextmanager
def _bundled_without_catalog():
    """Listing tasks reads the catalog but needs none: without one (a new store, or a
    mistyped --db), the bundled tasks are shown, with a note; nothing is created."""
    try:
        yield
    except NoCatalog as exc:
        click.echo(f"Note: {exc}; showing the bundled tasks", err=True)


@tasks_group.command("list")
@db_option
def list_command(db_url: str | None) -> None:
    """List the bundled tasks and those stored in the catalog.

    Example: catalog tasks list
    """
    import polars as pl

    rows = {
        spec.name: (spec.name, spec.kind, len(spec.options), len(spec.prompts), "bundled")
        for spec in bundled_tasks()
    }
    with _bundled_without_catalog(), catalog_session(db_url, read_only=True) as session:
        for task in session.scalars(select(Task)):
            where = "bundled, stored" if task.name in rows else "stored"
            rows[task.name] = (task.name, task.kind, len(task.options), len(task.prompts), where)
    columns = ["task", "kind", "options", "prompts", "where"]
    echo_frame(pl.DataFrame(sorted(rows.values()), schema=columns, orient="row"))


@tasks_group.command("show")
@click.argument("name")
@db_option
def show_command(name: str, db_url: str | None) -> None:
    """Print a task's options, normalizer and prompts (the stored version if stored).

    Example: catalog tasks show digit
    """
    stored = None
    with _bundled_without_catalog(), catalog_session(db_url, read_only=True) as session:
        task = session.scalar(select(Task).where(Task.name == name))
        if task is not None:
            prompts = [(p.position, p.key, p.template or "") for p in task.prompts]
            stored = (prompts, task.kind, task.options, task.normalizer, task.description,
                      "stored in the catalog", (task.spec or {}).get("scaffold"))
    if stored is None:
        spec = bundled_task(name)
        prompts = [(i, p.key, p.text) for i, p in enumerate(spec.prompts)]
        stored = (prompts, spec.kind, spec.options, spec.normalizer, spec.description,
                  "bundled, not stored yet", spec.scaffold)
    prompts, kind, options, normalizer, description, where, scaffold = stored
    click.echo(f"{name} ({kind} task, {where})")
    if description:
        click.echo(description)
    click.echo(f"normalizer: {normalizer}")
    click.echo(f"base-stage scaffold: {scaffold or DEFAULT_SCAFFOLD + ' (default)'}")
    click.echo(f"options: {', '.join(options) if options else '(open: as observed)'}")
    click.echo(f"prompts ({len(prompts)}):")
    for position, key, text in prompts:
        click.echo(f"  {position:>3}  {key}: {text}")


@tasks_group.command("add")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--update", is_flag=True,
              help="Replace a stored task's options, aliases or normalizer parameters; its "
              "runs become stale until `catalog renormalize`.")
@db_option
def add_command(path: Path, update: bool, db_url: str | None) -> None:
    """Validate a task file (same format as catalog/tasks/*.toml) and store the task.

    Storing a task again keeps its prompts (keys and texts must stay) and appends new ones.

    Example: catalog tasks add my_task.toml --update
    """
    spec = load_task_file(path)
    with catalog_session(db_url) as session:
        stored = registry.store_task(session, spec, update=update)
    click.echo(
        f"stored task {spec.name} ({spec.kind}, {len(spec.options)} options, "
        f"{stored.prompts} prompts)"
    )
    if stored.changed:
        click.echo(f"replaced {', '.join(stored.changed)}; {stored.stale_runs} runs are stale: "
                   "run `catalog renormalize --task " + spec.name + "`")


@click.command("renormalize")
@click.option("--task", "tasks", multiple=True, metavar="T", help="Only this task (repeatable).")
@click.option("--family", "families", multiple=True, metavar="F",
              help="Only this family (repeatable).")
@click.option("--bundled", is_flag=True,
              help="First bring the stored bundled tasks to this catalog's definitions (new "
              "vocabularies, aliases), as `catalog tasks add FILE --update` would.")
@db_option
def renormalize_command(tasks, families, bundled: bool, db_url: str | None) -> None:
    """Re-derive stored sampled runs' counts and invalid reasons from their completions with
    each task's current normalizer (after `catalog tasks add FILE --update`, or after an
    upgrade of the catalog whose normalizers have a new version).

    Loads no model and samples nothing; one transaction per run; running it again
    changes nothing. Runs without completions (imported counts) are left alone.

    Example: catalog renormalize --bundled --task digit --family olmo-2-1124-7b
    """
    from catalog.renormalize import renormalize, update_bundled_tasks

    with catalog_engine(db_url) as engine:
        if bundled:
            changed = update_bundled_tasks(engine, tasks or None)
            if changed:
                click.echo(f"updated bundled tasks: {', '.join(changed)}")
        click.echo(renormalize(engine, tasks=tasks or None, families=families or None))


COMMANDS = [tasks_group, renormalize_command]
