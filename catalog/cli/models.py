"""``catalog models``: the model registry (families and their ordered stages)."""

from __future__ import annotations

import click

from catalog import registry
from catalog.cli.common import catalog_session, db_option
from catalog.cli.store import echo_frame


@click.group("models")
def models_group() -> None:
    """Register model families and their stages (base, SFT, DPO, RL...)."""


@models_group.command("add")
@click.argument("name")
@click.option("--family", required=True, help="The family (post-training pipeline) it belongs to.")
@click.option("--stage", required=True, help="Stage name: base, sft, dpo, rl, rlvr, instruct or your own.")
@click.option("--stage-order", type=click.IntRange(min=0), default=None,
              help="Position in the pipeline (default: base=0, sft=1, dpo=2, rl/rlvr/instruct=3).")
@click.option("--source", required=True, metavar="HUB_ID_OR_PATH", help="Hub id or local directory.")
@click.option("--revision", default=None, help="Hub branch, tag or commit (a commit pins the weights).")
@click.option("--chat/--plain", "chat", default=None,
              help="Prompt through the chat template, or as plain text (default: plain for "
              "stage order 0, chat otherwise).")
@click.option("--gguf-file", default=None, help="GGUF file inside the source to load.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run the repository's own model code (needs --revision pinned to a commit).")
@click.option("--notes", default=None)
@db_option
def add_command(name, family, stage, stage_order, chat, db_url, **fields) -> None:
    """Register one stage of a model family.

    Example: catalog models add olmo-sft --family olmo-2-1124-7b --stage sft --source allenai/OLMo-2-1124-7B-SFT
    """
    if chat is None:
        chat = registry.stage_order_for(stage, stage_order) != 0
    with catalog_session(db_url) as session:
        model = registry.add_model(
            session, name=name, family=family, stage=stage, stage_order=stage_order,
            prompt_format="chat" if chat else "plain", **fields,
        )
        click.echo(
            f"{model.name}: family {family}, stage {model.stage} (order "
            f"{model.stage_order}), {model.prompt_format} prompts, from {model.source}"
        )


@models_group.command("list")
@click.option("--family", default=None, help="Only this family.")
@db_option
def list_command(family: str | None, db_url: str | None) -> None:
    """List the registered models by family and stage order.

    Example: catalog models list --family tulu-3-8b
    """
    import polars as pl

    with catalog_session(db_url) as session:
        rows = [
            (m.family.name, m.stage, m.stage_order, m.name, m.source or "", m.revision or "",
             m.prompt_format)
            for m in registry.list_models(session, family=family)
        ]
    if not rows:
        click.echo("no models registered; see `catalog models add --help` or `catalog models load study`")
        return
    columns = ["family", "stage", "order", "model", "source", "revision", "format"]
    echo_frame(pl.DataFrame(rows, schema=columns, orient="row"))


@models_group.command("load")
@click.argument("experiment")
@db_option
def load_command(experiment: str, db_url: str | None) -> None:
    """Register every family and stage of an experiment file (TOML), or of a shipped one.

    Example: catalog models load study
    """
    with catalog_session(db_url) as session:
        models = registry.load_experiment(session, experiment)
        families = sorted({m.family.name for m in models})
    click.echo(f"registered {len(models)} models in {len(families)} families: {', '.join(families)}")


COMMANDS = [models_group]
