"""``catalog ingest``: sample every (model, task, prompt) and store the counts."""

from __future__ import annotations

import click

from catalog.cli.common import catalog_engine, dataclass_defaults, db_option
from catalog.cli.progress import UnitProgress
from catalog.enums import DEVICES, DTYPES, RUN_MODES
from ingest.backends import SamplingParams
from ingest.jobs import IngestRequest, run_ingest

# The option defaults are the library's (one place: the dataclasses the options fill).
_SAMPLING = dataclass_defaults(SamplingParams)
_REQUEST = dataclass_defaults(IngestRequest)


def _split(values: tuple[str, ...]) -> list[str]:
    """Accept both ``--task a --task b`` and ``--task a,b``."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("must be 'auto' or a positive integer") from None


@click.command("ingest")
@click.option("--model", "models", multiple=True, metavar="NAME", help="Registered model (repeatable).")
@click.option("--family", "families", multiple=True, metavar="NAME", help="Every stage of a family.")
@click.option("--task", "tasks", multiple=True, required=True, metavar="NAME[,NAME]",
              help="Task(s) to sample (see `catalog tasks list`).")
@click.option("--prompt", "prompts", multiple=True, metavar="KEY", help="Only these prompt keys.")
@click.option("--samples", "-n", type=int, default=_SAMPLING["n"], show_default=True,
              help="N per prompt.")
@click.option("--seed", type=int, default=_REQUEST["seed"], show_default=True)
@click.option("--temperature", type=float, default=_SAMPLING["temperature"], show_default=True)
@click.option("--top-p", type=float, default=_SAMPLING["top_p"], show_default=True,
              help="1 = off.")
@click.option("--top-k", type=int, default=_SAMPLING["top_k"], help="Default: off.")
@click.option("--max-new-tokens", type=int, default=_SAMPLING["max_new_tokens"],
              show_default=True)
@click.option("--stop", multiple=True, metavar="TEXT", default=_SAMPLING["stop"],
              help="Stop string (repeatable). Default: none for chat stages, newline for plain.")
@click.option("--mode", type=click.Choice(RUN_MODES), default=_REQUEST["mode"],
              show_default=True, help="exact: score each option's probability (closed tasks).")
@click.option("--device", type=click.Choice(DEVICES), default=_REQUEST["device"],
              show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default=_REQUEST["dtype"], show_default=True)
@click.option("--batch-size", default=_REQUEST["batch_size"], show_default=True,
              metavar="auto|INT", help="Most rows per forward pass; auto halves it on out-of-memory.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pickle (.bin) checkpoints; they can run code when loaded.")
@db_option
def ingest(models, families, tasks, prompts, samples, seed, temperature, top_p, top_k,
           max_new_tokens, stop, mode, device, dtype, batch_size, allow_pickle, db_url) -> None:
    """Sample every (model, task, prompt) N times and store completions and counts.

    Work already done is skipped, so an interrupted job resumes by running the same
    command again; several workers may run it against one PostgreSQL database.

    Example: catalog ingest --family toy --task digit,coin --samples 1000 --seed 1
    """
    request = IngestRequest(
        models=_split(models), families=_split(families), tasks=_split(tasks),
        prompts=_split(prompts), seed=seed, mode=mode, device=device, dtype=dtype,
        batch_size=_batch_size(batch_size), allow_pickle=allow_pickle,
        params=SamplingParams(n=samples, temperature=temperature, top_p=top_p, top_k=top_k,
                              max_new_tokens=max_new_tokens, stop=tuple(stop)),
    )
    with catalog_engine(db_url) as engine, UnitProgress() as progress:
        summary = run_ingest(engine, request, progress=progress)
    click.echo(
        f"{summary.done} units sampled ({summary.samples:,} samples) in {summary.seconds:.1f}s; "
        f"{summary.already_done} of {summary.units} were already done"
    )
    if summary.failed:
        raise click.ClickException(
            f"{len(summary.failed)} units failed (first: {summary.failed[0]}); "
            "fix the cause and run the same command again to retry them"
        )


COMMANDS = [ingest]
