"""The explorer's web app (Starlette): overview, task, samples and queue pages.

Every page is a plain GET URL whose query string holds the whole selection, so a link shows
the same page to anyone who opens it on the same store. The app answers GET and HEAD only
(any other method is 405, on every path, before routing), reads the store through a
read-only engine, and sends every page with a Content-Security-Policy that allows no script
at all: model output is shown as escaped text (Jinja2 autoescape), and the policy is a second
wall behind the escaping. Figures are PNG data URIs, as in the report. Nothing is fetched
from elsewhere (no CDN, no JavaScript).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import jinja2
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from catalog import __version__
from catalog.config import masked
from catalog.enums import RUN_MODES, RUN_STATUSES
from catalog.errors import InvalidInput, NotFound
from catalog.serve.store import MOST_TEXTS, Explorer, counted_cell, prompt_cells, task_groups

QUEUE_REFRESH_SECONDS = 10
INVALID_FILTERS = ("any", "only", "none")
# Bootstrap replicates a page may ask for: enough for a stable support share, few enough that
# one URL cannot keep the server busy for long.
MOST_BOOTSTRAP = 2000
_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
log = logging.getLogger("catalog.serve")


class ReadOnlyMethods:
    """Refuse every method but GET and HEAD with 405, whatever the path (ASGI middleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse(
                "405 Method Not Allowed: the catalog explorer is read-only (GET only)\n",
                status_code=405, headers={"Allow": "GET, HEAD", **_HEADERS})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(engine: Engine, *, host: str = "127.0.0.1",
               describe: Callable[[BaseException], str | None] = lambda exc: None) -> Starlette:
    """The app over ``engine``, which must be read-only (:func:`catalog.views.read_only_engine`).
    ``host``: the address served; on a loopback address only loopback Host headers are
    answered (a page of another site cannot reach the store by DNS rebinding)."""
    explorer = Explorer(engine)
    templates = _templates()
    store_name = masked(engine.url)

    def page(name: str, code: int = 200, **context: Any) -> HTMLResponse:
        body = templates.get_template(name).render(store=store_name, version=__version__,
                                                   **context)
        return HTMLResponse(body, status_code=code, headers=_HEADERS)

    def overview(request: Request) -> HTMLResponse:
        with explorer.cache.snapshot():
            return _overview(request)

    def _overview(request: Request) -> HTMLResponse:
        mode = _choice(request, "mode", RUN_MODES, "sampled")
        bootstrap = _bootstrap(request, mode)
        result = explorer.analysis(mode, bootstrap)
        conditions = _conditions(result)
        key = request.query_params.get("condition") or _default_condition(result)
        if result is not None and key not in conditions:
            raise NotFound(f"no condition {key!r} in the store's {mode} runs")
        groups = [g for g in (result.groups if result else []) if g.condition_key == key]
        families = list(dict.fromkeys(g.family for g in groups))
        tasks = sorted(dict.fromkeys(g.task for g in groups))
        counts = explorer.run_counts(mode)
        cells = {(g.family, g.task): _verdicts(g) for g in groups}
        totals = Counter()
        for (_f, _t, k), c in counts.items():
            if k == key:
                totals.update(c)
        return page("overview.html.j2", title="Catalog explorer", mode=mode, modes=RUN_MODES,
                    bootstrap=bootstrap, most_bootstrap=MOST_BOOTSTRAP,
                    conditions=conditions, condition=key, families=families, tasks=tasks,
                    cells=cells, counts={(f, t): c for (f, t, k), c in counts.items() if k == key},
                    totals=totals, warnings=list(result.warnings) if result else [])

    def task_page(request: Request) -> HTMLResponse:
        with explorer.cache.snapshot():
            return _task_page(request)

    def _task_page(request: Request) -> HTMLResponse:
        task = request.path_params["task"]
        mode = _choice(request, "mode", RUN_MODES, "sampled")
        bootstrap = _bootstrap(request, mode)
        result = explorer.analysis(mode, bootstrap)
        if result is None or task not in {g.task for g in result.groups}:
            raise NotFound(f"no task {task!r} with done {mode} runs in the store")
        conditions = {k: v for k, v in _conditions(result).items()
                      if any(g.task == task and g.condition_key == k and g.stages
                             for g in result.groups)}
        key = request.query_params.get("condition") or next(iter(conditions), None)
        if key not in conditions:
            raise NotFound(f"task {task!r} has no sampled stage in condition {key!r}")
        every = task_groups(result, task, key)
        wanted = tuple(request.query_params.getlist("family"))
        unknown = sorted(set(wanted) - {g.family for g in every})
        if unknown:
            raise NotFound(f"no family {', '.join(map(repr, unknown))} for task {task!r} in "
                           "this condition")
        groups = task_groups(result, task, key, wanted)
        picks = list(dict.fromkeys(p for g in groups for p in g.checkpoints))
        pick = _pick(request, task, picks)
        sections = explorer.cache.get(
            ("sections", mode, task, key, wanted, bootstrap, pick),
            lambda: _sections(groups, explorer.model_names(), pick,
                              lambda model: explorer.checkpoint_counts(model, task, key)))
        figures = explorer.figures(mode, task, key, wanted, bootstrap)
        return page("task.html.j2", title=f"Task {task}", task=task, mode=mode,
                    bootstrap=bootstrap, most_bootstrap=MOST_BOOTSTRAP,
                    conditions=conditions, condition=key, all_families=[g.family for g in every],
                    chosen=wanted, sections=sections, figures=figures, picks=picks,
                    stage=pick[0], step=pick[1],
                    nucleation={g.family: g.values.get("nucleation_ratio") for g in groups})

    def samples_page(request: Request) -> HTMLResponse:
        params = request.query_params
        missing = [n for n in ("model", "task", "prompt", "condition") if not params.get(n)]
        if missing:
            raise InvalidInput(f"the samples page needs {', '.join(missing)} in its URL; "
                               "follow a link from a task page")
        invalid = _choice(request, "invalid", INVALID_FILTERS, "any")
        option = params.get("option") or None
        data = explorer.samples(params["model"], params["task"], params["prompt"],
                                params["condition"], option=option, invalid=invalid)
        base = {n: params[n] for n in ("model", "task", "prompt", "condition")}
        return page("samples.html.j2", title=f"Samples: {params['model']}", base=base,
                    option=option, invalid=invalid, invalid_filters=INVALID_FILTERS,
                    most=MOST_TEXTS, **data)

    def queue_page(request: Request) -> HTMLResponse:
        status = explorer.queue()
        return page("queue.html.j2", title="Queue", status=status, totals=status.totals(),
                    states=RUN_STATUSES, refresh=QUEUE_REFRESH_SECONDS)

    async def not_found(request: Request, exc: Exception) -> HTMLResponse:
        message = str(exc) if isinstance(exc, NotFound) else f"no page at {request.url.path}"
        return page("error.html.j2", code=404, title="Not found", message=message)

    async def bad_request(request: Request, exc: Exception) -> HTMLResponse:
        return page("error.html.j2", code=400, title="Bad request", message=str(exc))

    async def server_error(request: Request, exc: Exception) -> HTMLResponse:
        message = describe(exc)  # the CLI's one line for an expected failure, secrets out
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return page("error.html.j2", code=500, title="Error",
                    message=message or "the page failed (the server's log has the details)")

    routes = [
        Route("/", overview, methods=["GET"]),
        Route("/task/{task:path}", task_page, methods=["GET"]),
        Route("/samples", samples_page, methods=["GET"]),
        Route("/queue", queue_page, methods=["GET"]),
    ]
    hosts = ["*"] if host not in _LOOPBACK else ["127.0.0.1", "localhost", "::1", "[::1]"]
    return Starlette(
        routes=routes,
        middleware=[Middleware(ReadOnlyMethods), Middleware(TrustedHostMiddleware,
                                                            allowed_hosts=hosts)],
        exception_handlers={NotFound: not_found, InvalidInput: bad_request,
                            404: not_found, Exception: server_error},
    )


def _pick(request: Request, task: str,
          picks: list[tuple[str, int | None]]) -> tuple[str | None, int | None]:
    """The ``stage`` and ``step`` query values (None: every stage, every checkpoint), checked
    against the (stage, step) pairs of the page's groups."""
    stage = request.query_params.get("stage") or None
    step = request.query_params.get("step") or None
    if step is not None and not (step.isascii() and step.isdigit()):
        raise InvalidInput(f"step must be a checkpoint's whole number, not {step!r}")
    if step is not None and stage is None:
        raise InvalidInput("step needs a stage (a checkpoint of which stage?)")
    step = None if step is None else int(step)
    if stage is not None and stage not in {s for s, _ in picks}:
        raise NotFound(f"no stage {stage!r} for task {task!r} in this condition")
    if step is not None and (stage, step) not in picks:
        raise NotFound(f"no checkpoint {step} of stage {stage!r} for task {task!r}")
    return stage, step


def _sections(groups, models, pick: tuple[str | None, int | None],
              live: Callable[[str], dict[str, dict[str, int]]]) -> list[dict[str, Any]]:
    """Per family of a task page: verdicts, seed, metrics by stage, the prompts' cells (of
    the picked stage and checkpoint only, when one is picked). The analysis keeps each
    stage's final checkpoint only: an earlier one's cells are read live (``live(model)``),
    without metrics."""
    import numpy as np

    stage, step = pick
    sections = []
    for g in groups:
        shown = [i for i, (s, t) in enumerate(zip(g.stages, g.steps))
                 if (stage is None or s == stage) and (step is None or t == step)]
        prompts = prompt_cells(g)
        for row in prompts:
            row["cells"] = [row["cells"][i] for i in shown]
        earlier = []
        if not shown and (stage, step) in g.checkpoints:
            model = models.get((g.family, stage, step))
            counts = live(model) if model else {}
            for row in prompts:
                by_option = counts.get(row["prompt"], {})
                row["cells"] = [counted_cell(g.options, np.array(
                    [by_option.get(o, 0) for o in g.options], dtype=float))]
            earlier = [{"stage": stage, "step": step, "model": model, "role": "checkpoint",
                        "n_prompts": sum(bool(row["cells"][0]) for row in prompts),
                        "validity": None, "entropy_pooled": None, "liquidity": None,
                        "mse_to_seed": None, "probmass": None}]
        sections.append({
            "family": g.family, "verdicts": _verdicts(g), "status": g.status,
            "problems": [p.message for p in g.problems],
            "seed": g.prompt_key(g.seed_index), "seed_support": g.seed_support,
            "threshold": g.support_threshold,
            "stages": [{"stage": s, "step": t, "model": models.get((g.family, s, t)),
                        "role": g.role(i), "n_prompts": int(g.n_prompts[i]),
                        "validity": float(g.validity[i]),
                        **{m: (float(g.values[m][i]) if m in g.values else None)
                           for m in ("entropy_pooled", "liquidity", "mse_to_seed",
                                     "probmass")}}
                       for i, (s, t) in enumerate(zip(g.stages, g.steps)) if i in shown]
                      + earlier,
            "prompts": prompts,
        })
    return sections


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("catalog.serve", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = _number
    environment.filters["percent"] = lambda v: "—" if v is None else f"{v:.0%}"
    environment.filters["query"] = _query
    return environment


def _query(params: dict[str, Any]) -> str:
    """A query string of the non-empty values (a list value repeats its name)."""
    from urllib.parse import urlencode

    pairs = []
    for name, value in params.items():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v not in (None, ""):
                pairs.append((name, v))
    return urlencode(pairs)


def _number(value: Any, digits: int = 3) -> str:
    import math

    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.{digits}f}"


def _choice(request: Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _bootstrap(request: Request, mode: str) -> int:
    """The ``bootstrap`` query value: replicates for the verdicts' support (0: none)."""
    value = request.query_params.get("bootstrap") or "0"
    if not (value.isascii() and value.isdigit()) or int(value) > MOST_BOOTSTRAP:
        raise InvalidInput(f"bootstrap must be a whole number from 0 (off) to {MOST_BOOTSTRAP}, "
                           f"not {value!r}")
    if int(value) and mode == "exact":
        raise InvalidInput("exact probabilities have no sampling noise to bootstrap; "
                           "drop bootstrap or show sampled counts")
    return int(value)


def _conditions(result) -> dict[str, str]:
    """{condition_key: label} of the analysis' groups, the most analyzed first."""
    if result is None:
        return {}
    from analysis.results import condition_label

    counted = Counter(g.condition_key for g in result.groups if g.stages)
    labels = {g.condition_key: condition_label(g.condition) for g in result.groups}
    return {k: labels[k] for k, _ in counted.most_common()}


def _default_condition(result) -> str | None:
    return next(iter(_conditions(result)), None)


def _verdicts(g) -> list[tuple[str, str, float | None]]:
    """(label, word, support) of each verdict of a group: liquid, nucleated, settled per
    stage; the word is "uncertain" where the bootstrap support is below the threshold, and
    the support is None without a bootstrap."""
    from analysis.results import verdict_word

    reading = g.verdict_reading()
    support = g.verdict_support or {"liquid": None, "nucleated": None, "settled": {}}
    out = [("liquid", verdict_word(reading["liquid"]), support["liquid"]),
           ("nucleated", verdict_word(reading["nucleated"]), support["nucleated"])]
    out += [(f"settled {stage}", verdict_word(v), support["settled"].get(stage))
            for stage, v in reading["settled"].items()]
    return out
