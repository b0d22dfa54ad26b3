"""``catalog models``: the model registry (families and their ordered stages)."""

from __future__ import annotations

import click

from catalog import registry
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


@click.group("models")
def models_group() -> None:
    """Register model families and their stages (base, SFT, DPO, RL...)."""


@models_group.command("add")
@click.argument("name")
@click.option("--family", required=True, help="The family (post-training pipeline) it belongs to.")
@click.option("--stage", required=True, help="Stage name: base, sft, dpo, rl, rlvr, instruct or your own.")
@click.option("--stage-order", type=click.IntRange(min=0), default=None,
              help="Position in the pipeline (default: base=0, sft=1, dpo=2, rl/rlvr/instruct=3).")
@click.option("--step", type=click.IntRange(min=0), default=None,
              help="This model is the checkpoint of the stage at this training step (or tokens).")
@click.option("--source", required=True, metavar="HUB_ID_OR_PATH", help="Hub id or local directory.")
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
@click.option("--family", required=True, help="The family the checkpoints belong to.")
@click.option("--stage", required=True, help="The stage they are checkpoints of.")
@click.option("--stage-order", type=click.IntRange(min=0), default=None,
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

    with catalog_session(db_url) as session:
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


COMMANDS = [models_group]
