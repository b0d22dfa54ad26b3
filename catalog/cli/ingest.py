"""``catalog ingest``: plan and sample every (model, task, prompt) in one command.

The selection and sampling options are shared with ``catalog plan``, the model-loading
options with ``catalog worker``.
"""

from __future__ import annotations

import functools

import click

from catalog.cli import types
from catalog.cli.common import catalog_engine, dataclass_defaults, db_option
from catalog.cli.errors import Interrupted
from catalog.cli.progress import UnitProgress
from catalog.enums import DEVICES, DTYPES, RUN_MODES
from ingest.backends import LoadOptions, SamplingParams
from ingest.jobs import IngestSummary, run_ingest
from ingest.planning import IngestRequest
from ingest.worker import WorkerOptions, stop_on_signals

# The option defaults are the library's (one place: the dataclasses the options fill).
_SAMPLING = dataclass_defaults(SamplingParams)
_REQUEST = dataclass_defaults(IngestRequest)
_LOAD = dataclass_defaults(LoadOptions)


def split_names(values) -> list[str]:
    """Accept both ``--task a --task b`` and ``--task a,b`` (and lists from a TOML file)."""
    if isinstance(values, str):
        values = [values]
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def sweep_values(value, kind: click.ParamType = types.FiniteFloat(), param=None) -> list:
    """One value or a sweep: ``0.7``, ``"0.3,0.7,1.0"`` or a list (from a TOML file), each
    value checked by ``kind`` (finite numbers by default)."""
    values = value if isinstance(value, (list, tuple)) else str(value).split(",")
    values = [v for v in values if str(v).strip()]
    if not values:
        raise click.BadParameter("expected a number or comma-separated numbers",
                                 param_hint=param)
    return list(dict.fromkeys(checked(kind, v, param) for v in values))


def checked(kind: click.ParamType, value, param: str | None):
    """``value`` converted by ``kind``; a bad one is a usage error naming ``param`` (values
    from an experiment file pass here too, not only through click)."""
    try:
        return kind.convert(value, None, None)
    except click.BadParameter as exc:
        exc.param_hint = param
        raise


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise click.BadParameter("must be 'auto' or a positive integer") from None
    if not 1 <= size <= 2**31 - 1:
        raise click.BadParameter(f"must be 'auto' or an integer from 1 to {2**31 - 1:,}")
    return size


_REQUEST_OPTIONS = (
    click.option("--model", "models", multiple=True, metavar="NAME",
                 help="Registered model (repeatable)."),
    click.option("--family", "families", multiple=True, metavar="NAME",
                 help="Every stage of a family."),
    click.option("--task", "tasks", multiple=True, metavar="NAME[,NAME]",
                 help="Task(s) to sample (see `catalog tasks list`)."),
    click.option("--prompt", "prompts", multiple=True, metavar="KEY",
                 help="Only these prompt keys."),
    click.option("--samples", "-n", type=types.SAMPLES, default=_SAMPLING["n"], show_default=True,
                 help="N per prompt."),
    click.option("--seed", type=types.SEED, default=_REQUEST["seed"], show_default=True),
    click.option("--temperature", default=str(_SAMPLING["temperature"]), show_default=True,
                 metavar="T[,T...]",
                 help="A value, or a sweep (0.3,0.7,1.0): one set of units per value."),
    click.option("--top-p", default=str(_SAMPLING["top_p"]), show_default=True,
                 metavar="P[,P...]", help="1 = off; a sweep like --temperature."),
    click.option("--top-k", type=types.TOP_K, default=_SAMPLING["top_k"], help="Default: off."),
    click.option("--max-new-tokens", type=types.MAX_NEW_TOKENS, default=_SAMPLING["max_new_tokens"],
                 show_default=True),
    click.option("--stop", multiple=True, metavar="TEXT", default=_SAMPLING["stop"],
                 help="Stop string (repeatable). Default: none for chat stages, newline for "
                 "plain."),
    click.option("--mode", type=click.Choice(RUN_MODES), default=_REQUEST["mode"],
                 show_default=True, help="exact: score each option's probability (closed tasks)."),
    click.option("--scaffold", default=_REQUEST["scaffold"], metavar="NAME",
                 help="Base-stage scaffold: qa@1 or fewshot@1 (default: the task file's, "
                 "else qa@1)."),
)

_BACKEND_OPTIONS = (
    click.option("--device", type=click.Choice(DEVICES), default=_LOAD["device"],
                 show_default=True),
    click.option("--dtype", type=click.Choice(DTYPES), default=_LOAD["dtype"],
                 show_default=True),
    click.option("--batch-size", default=_LOAD["batch_size"], show_default=True,
                 callback=lambda ctx, param, value: _batch_size(value), metavar="auto|INT",
                 help="Most rows per forward pass; auto halves it on out-of-memory."),
    click.option("--allow-pickle", is_flag=True, default=_LOAD["allow_pickle"],
                 help="Accept pickle (.bin) checkpoints; they can run code when loaded."),
)


def request_options(command):
    """What to sample: the options :func:`ingest_requests` takes."""
    for option in reversed(_REQUEST_OPTIONS):
        command = option(command)
    return command


def backend_options(command):
    """How models load: --device, --dtype, --batch-size and --allow-pickle, given to the
    command as one ``load`` argument (a LoadOptions)."""
    @functools.wraps(command)
    def with_load(*args, device, dtype, batch_size, allow_pickle, **kwargs):
        load = LoadOptions(device=device, dtype=dtype, batch_size=batch_size,
                           allow_pickle=allow_pickle)
        return command(*args, load=load, **kwargs)

    for option in reversed(_BACKEND_OPTIONS):
        with_load = option(with_load)
    return with_load


def ingest_requests(*, models, families, tasks, prompts, samples, seed, temperature, top_p,
                    top_k, max_new_tokens, stop, mode, scaffold=None) -> list[IngestRequest]:
    """The requests the selection and sampling options describe: one per value of a
    temperature or top-p sweep."""
    if not split_names(models) and not split_names(families):
        raise click.UsageError("name the models to sample with --model NAME or --family NAME")
    if not split_names(tasks):
        raise click.UsageError("name the tasks to sample with --task NAME")
    samples = checked(types.SAMPLES, samples, "--samples")
    seed = checked(types.SEED, seed, "--seed")
    max_new_tokens = checked(types.MAX_NEW_TOKENS, max_new_tokens, "--max-new-tokens")
    top_k = None if top_k is None else checked(types.TOP_K, top_k, "--top-k")
    return [
        IngestRequest(
            models=split_names(models), families=split_names(families), tasks=split_names(tasks),
            prompts=split_names(prompts), seed=seed, mode=mode, scaffold=scaffold,
            params=SamplingParams(n=samples, temperature=t, top_p=p, top_k=top_k,
                                  max_new_tokens=max_new_tokens, stop=tuple(stop)),
        )
        for t in sweep_values(temperature, types.TEMPERATURE, "--temperature")
        for p in sweep_values(top_p, types.TOP_P, "--top-p")
    ]


@click.command("ingest")
@request_options
@backend_options
@db_option
def ingest(load, db_url, **selection) -> None:
    """Sample every (model, task, prompt) N times and store completions and counts.

    Plans the units and samples them with one worker in this process. Work already done
    is skipped, so an interrupted job resumes by running the same command again; Ctrl-C
    (or SIGTERM) releases the unit being sampled, as `catalog worker` does, and exits 130.
    For many workers, use `catalog plan` and `catalog worker`.

    Example: catalog ingest --family toy --task digit,coin --samples 1000 --temperature 0.7,1
    """
    requests = ingest_requests(**selection)
    options = WorkerOptions(load=load)
    summary = IngestSummary()
    with catalog_engine(db_url) as engine, stop_on_signals() as stop, \
            UnitProgress() as progress:
        for request in requests:  # a sweep: one set of units per value
            summary.add(run_ingest(engine, request, options, progress=progress, stop=stop))
            if stop.requested:
                break
    if stop.requested:
        raise Interrupted(
            f"stopped after {summary.done} units ({summary.samples:,} samples); the unit being "
            "sampled was released: run the same command again to resume"
        )
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
