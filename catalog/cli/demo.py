"""``catalog demo``: the whole study on a toy family, on this machine, in a few minutes."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.cli import types
from catalog.cli.common import catalog_engine, dataclass_defaults, db_option
from catalog.cli.progress import UnitProgress
from catalog.config import database_url, masked
from catalog.demo import DemoOptions, change_points, planted_vs_found, run_demo

_DEMO = dataclass_defaults(DemoOptions)


def _seed_prompts(values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for value in values:
        task, sep, key = value.partition("=")
        if not sep or not task or not key:
            raise click.BadParameter(f"{value!r} is not TASK=PROMPT_KEY", param_hint="--seed-prompt")
        pairs[task.strip()] = key.strip()
    return pairs


@click.command("demo")
@click.option("--family", default=_DEMO["family"], show_default=True,
              help="Name to register the toy family as.")
@click.option("--seed-prompt", "seed_prompts", multiple=True, metavar="TASK=KEY",
              help="Plant this prompt as the task's seed (default: each task's third prompt).")
@click.option("--samples", "-n", type=types.SAMPLES, default=_DEMO["samples"],
              show_default=True)
@click.option("--prompts-per-task", type=click.IntRange(min=2, max=12),
              default=_DEMO["prompts_per_task"], show_default=True,
              help="Train and sample the first K prompts of each task.")
@click.option("--seed", type=types.SEED, default=_DEMO["seed"], show_default=True,
              help="Sampling and bootstrap seed.")
@click.option("--bootstrap", type=click.IntRange(min=0, max=1_000_000), default=_DEMO["bootstrap"],
              show_default=True)
@click.option("--checkpoints", type=click.IntRange(min=0, max=1000), default=_DEMO["checkpoints"],
              show_default=True,
              help="Also register and sample K evenly spaced checkpoints of SFT and of DPO, and "
              "report where the metrics change over them.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=_DEMO["report_dir"], show_default=True, help="Report directory.")
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@db_option
def demo(family, seed_prompts, samples, prompts_per_task, seed, bootstrap, checkpoints, report_dir,
         no_report, db_url) -> None:
    """Run the whole study on a toy model family whose seed we know.

    Trains (or reuses) a tiny base -> SFT -> DPO family on the CPU, samples every stage,
    task and prompt, analyzes the store and writes the report: the liquid base, the SFT
    nucleating onto the planted seed prompt, DPO settling. With --checkpoints K, also K
    checkpoints of SFT and of DPO, and where the metrics change over them.

    Example: catalog demo --seed-prompt digit=polite --samples 2000 --checkpoints 8
    """
    from analysis.render import render

    options = DemoOptions(
        family=family, seed_prompts=_seed_prompts(seed_prompts), samples=samples, seed=seed,
        prompts_per_task=prompts_per_task, bootstrap=bootstrap, checkpoints=checkpoints,
        report_dir=None if no_report else report_dir,
    )
    with catalog_engine(db_url) as engine, UnitProgress() as progress:
        result = run_demo(engine, options, say=click.echo, progress=progress)
    click.echo()
    click.echo(render(result.analysis, "table"))
    click.echo("Planted seed vs found (liquid at base, nucleated at SFT, settled after):")
    for row in planted_vs_found(result.family, result.analysis):
        mark = "ok" if row["planted_seed"] == row["found_seed"] else "DIFFERENT"
        click.echo(f"  {row['task']:<8} planted {row['planted_seed']:<10} found "
                   f"{row['found_seed'] or '-':<10} {mark:<9} liquid={row['liquid']} "
                   f"nucleated={row['nucleated']} settled={row['settled']}")
    points = change_points(result.analysis)
    if points:
        click.echo(f"Change points over the {len(points[0]['values'])} checkpoints:")
        for record in points:
            click.echo(f"  {record['task']:<8} {record['reading']}")
    db = "" if db_url is None else f" --db {masked(database_url(db_url))}"
    click.echo("\nWhat was stored, and how to look at it:")
    click.echo(f"  catalog analyze --family {family}{db} --format json")
    click.echo(f"  catalog sql \"SELECT stage, prompt, option, probability FROM v_distributions "
               f"WHERE family = '{family}' AND task = 'digit' ORDER BY stage_order, prompt_id\"{db}")
    target = "" if db_url is None else repr(masked(database_url(db_url)))
    click.echo(f"  python -c \"from catalog.db import open_catalog; from catalog.views import "
               f"read_view; print(read_view(open_catalog({target}), 'v_distributions', "
               f"family='{family}'))\"")
    click.echo(f"  catalog serve{db}   # then open http://127.0.0.1:8000/ (needs the serve extra)")
    if result.report_path is not None:
        click.echo(f"  open {result.report_path}")


COMMANDS = [demo]
