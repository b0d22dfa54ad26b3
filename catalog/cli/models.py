"""``catalog models``: the model registry (families and their ordered stages)."""

from __future__ import annotations

from pathlib import Path

import click

from catalog import registry
from catalog.cli import types
from catalog.cli.common import catalog_session, dataclass_defaults, db_option
from catalog.cli.store import echo_frame
from ingest.backends import ModelSpec, check_backend_options

_SPEC = dataclass_defaults(ModelSpec)


def _backend_args(ctx, param, values) -> dict[str, str]:
    """``--backend-arg KEY=VALUE`` (repeatable) as a dict; the backend converts the values."""
    options: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. enforce_eager=true)")
        if key.strip() in options:
            raise click.BadParameter(f"{key.strip()} is given twice")
        options[key.strip()] = value.strip()
    return options


def _source(ctx, param, value: str | None) -> str | None:
    """A hub id, or a local directory that exists: a mistyped path is refused here, not
    when a worker first loads the model."""
    if value is None:
        return None
    value = types.Name("models.source").convert(value, param, ctx)
    local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
    if local and not Path(value).expanduser().exists():
        raise click.BadParameter(f"{value}: no such local directory (a hub id is ORG/NAME)")
    return value


@click.group("models")
def models_group() -> None:
    """Register model families and their stages (base, SFT, DPO, RL...)."""


@models_group.command("add")
@click.argument("name", type=types.Name("models.name"))
@click.option("--family", required=True, type=types.Name("families.name"),
              help="The family (post-training pipeline) it belongs to.")
@click.option("--stage", required=True, type=types.Name("models.stage"),
              help="Stage name: base, sft, dpo, rl, rlvr, instruct or your own.")
@click.option("--stage-order", type=types.STAGE_ORDER, default=None,
              help="Position in the pipeline (default: base=0, sft=1, dpo=2, rl/rlvr/instruct=3).")
@click.option("--step", type=types.STEP, default=None,
              help="This model is the checkpoint of the stage at this training step (or tokens).")
@click.option("--source", required=True, metavar="HUB_ID_OR_PATH", callback=_source,
              help="Hub id or local directory.")
@click.option("--revision", default=None, help="Hub branch, tag or commit (a commit pins the weights).")
@click.option("--chat/--plain", "chat", default=None,
              help="Prompt through the chat template, or as plain text (default: plain for "
              "stage order 0, chat otherwise).")
@click.option("--gguf-file", default=None, help="GGUF file inside the source to load.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run the repository's own model code (needs --revision pinned to a commit).")
@click.option("--backend", default=_SPEC["backend"], show_default=True, metavar="NAME",
              help="Sampling backend: transformers (the tree sampler), vllm, openai (an "
              "OpenAI-compatible server or API), table, or one registered through the "
              "catalog.backends entry point group.")
@click.option("--backend-arg", "backend_options", multiple=True, metavar="KEY=VALUE",
              callback=_backend_args,
              help="A backend option, stored with the model (repeatable), e.g. "
              "gpu_memory_utilization=0.85, tensor_parallel_size=2, enforce_eager=true.")
@click.option("--notes", default=None)
@db_option
def add_command(name, family, stage, stage_order, chat, db_url, **fields) -> None:
    """Register one stage of a model family, or one checkpoint of a stage (--step).

    Example: catalog models add olmo-sft --family olmo-2-1124-7b --stage sft --source allenai/OLMo-2-1124-7B-SFT --backend vllm --backend-arg gpu_memory_utilization=0.85
    """
    if chat is None:
        chat = registry.stage_order_for(stage, stage_order) != 0
    with catalog_session(db_url) as session:
        model = registry.add_model(
            session, name=name, family=family, stage=stage, stage_order=stage_order,
            prompt_format="chat" if chat else "plain", check_backend=check_backend_options,
            **fields,
        )
        click.echo(
            f"{model.name}: family {family}, stage {model.stage} (order "
            f"{model.stage_order}){_at_step(model)}, {model.prompt_format} prompts, "
            f"from {model.source} ({model.backend})"
        )


def _at_step(model) -> str:
    return "" if model.step is None else f" step {model.step}"


@models_group.command("add-checkpoints")
@click.option("--family", required=True, type=types.Name("families.name"),
              help="The family the checkpoints belong to.")
@click.option("--stage", required=True, type=types.Name("models.stage"),
              help="The stage they are checkpoints of.")
@click.option("--stage-order", type=types.STAGE_ORDER, default=None,
              help="Position in the pipeline (default: base=0, sft=1, dpo=2, rl/rlvr/instruct=3).")
@click.option("--source", required=True, metavar="DIR_OR_HUB_ID",
              help="A training run's output directory (its checkpoint-<step>/ folders), or a "
              "hub id with --revisions.")
@click.option("--revisions", default=None, metavar="REGEX",
              help="Register the hub branches matching this regex (e.g. '^stage1-step'); "
              "the step comes from each name (step1000) or the regex's (?P<step>...) group.")
@click.option("--chat/--plain", "chat", default=None,
              help="Prompt through the chat template, or as plain text (default: plain for "
              "stage order 0, chat otherwise).")
@click.option("--backend", default=_SPEC["backend"], show_default=True, metavar="NAME",
              help="Sampling backend of every checkpoint (as in `catalog models add`).")
@click.option("--backend-arg", "backend_options", multiple=True, metavar="KEY=VALUE",
              callback=_backend_args, help="A backend option (repeatable).")
@click.option("--notes", default=None)
@db_option
def add_checkpoints_command(family, stage, stage_order, chat, db_url, **fields) -> None:
    """Register every checkpoint of a training run as a step of one stage.

    Models are named <family>-<stage>-step<step>; registering them again changes nothing.

    Example: catalog models add-checkpoints --family olmo-2-1124-7b --stage base --source allenai/OLMo-2-1124-7B --revisions '^stage1-step[0-9]+000-'
    """
    if chat is None:
        chat = registry.stage_order_for(stage, stage_order) != 0
    with catalog_session(db_url) as session:
        models = registry.add_checkpoints(
            session, family=family, stage=stage, stage_order=stage_order,
            prompt_format="chat" if chat else "plain", check_backend=check_backend_options,
            **fields,
        )
        first, last = models[0].step, models[-1].step
    click.echo(f"{len(models)} checkpoints of {family} stage {stage}: steps {first} .. {last}")


@models_group.command("list")
@click.option("--family", default=None, help="Only this family.")
@db_option
def list_command(family: str | None, db_url: str | None) -> None:
    """List the registered models by family, stage order and step (checkpoints).

    Example: catalog models list --family tulu-3-8b
    """
    import polars as pl

    with catalog_session(db_url, read_only=True) as session:
        if family is not None:
            registry.get_family(session, family)  # a mistyped family is an error
        rows = [
            (m.family.name, m.stage, m.stage_order, "" if m.step is None else str(m.step),
             m.name, m.source or "", m.revision or "", m.prompt_format, m.backend)
            for m in registry.list_models(session, family=family)
        ]
    if not rows:
        click.echo("no models registered; see `catalog models add --help` or `catalog models load study`")
        return
    columns = [
        "family", "stage", "order", "step", "model", "source", "revision", "format", "backend",
    ]
    echo_frame(pl.DataFrame(rows, schema=columns, orient="row"))


@models_group.command("load")
@click.argument("experiment")
@db_option
def load_command(experiment: str, db_url: str | None) -> None:
    """Register every family and stage of an experiment file (TOML), or of a shipped one.

    Example: catalog models load study
    """
    with catalog_session(db_url) as session:
        models = registry.load_experiment(
            session, experiment, check_backend=check_backend_options
        )
        families = sorted({m.family.name for m in models})
    click.echo(f"registered {len(models)} models in {len(families)} families: {', '.join(families)}")


@models_group.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Also when the model has done (or running) units: their runs and counts "
              "are removed with it.")
@db_option
def remove_command(name: str, force: bool, db_url: str | None) -> None:
    """Remove a registered model, with its planned units (and its family if it was the
    last one). Refused while it has done units, unless --force; all or nothing.

    Example: catalog models remove olmo-sft-typo
    """
    with catalog_session(db_url) as session:
        click.echo(registry.remove_model(session, name, force=force))


@models_group.command("update")
@click.argument("name")
@click.option("--source", default=None, metavar="HUB_ID_OR_PATH", callback=_source,
              help="New hub id or local directory.")
@click.option("--revision", default=None, help="New hub branch, tag or commit.")
@click.option("--chat/--plain", "chat", default=None, help="New prompt format.")
@click.option("--gguf-file", default=None, help="New GGUF file inside the source.")
@click.option("--backend", default=None, metavar="NAME", help="New sampling backend.")
@click.option("--backend-arg", "backend_options", multiple=True, metavar="KEY=VALUE",
              callback=_backend_args, help="Replace the backend options (repeatable).")
@click.option("--notes", default=None, help="New notes (always allowed).")
@click.option("--force", is_flag=True,
              help="Also when the model has done units (sampled from what it was).")
@db_option
def update_command(name, chat, backend_options, force, db_url, **given) -> None:
    """Correct a registered model's source, revision, prompt format, backend or notes.

    Refused while the model has done units (their counts came from what it was), unless
    --force; the notes can always change.

    Example: catalog models update olmo-sft --revision main --notes "fixed the revision"
    """
    changes = {field: value for field, value in given.items() if value is not None}
    if chat is not None:
        changes["prompt_format"] = "chat" if chat else "plain"
    if backend_options:
        changes["backend_options"] = backend_options
    if not changes:
        raise click.UsageError("nothing to change; give --source, --revision, --chat/--plain, "
                               "--gguf-file, --backend, --backend-arg or --notes")
    with catalog_session(db_url) as session:
        changed = registry.update_model(session, name, force=force,
                                        check_backend=check_backend_options, **changes)
    click.echo(f"{name}: " + ("; ".join(changed) if changed else "nothing changed"))


COMMANDS = [models_group]
