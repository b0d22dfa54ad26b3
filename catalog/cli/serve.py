"""``catalog serve``: a live, read-only web explorer of the store (catalog/serve/)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading

import click

from catalog.cli.common import db_option
from catalog.cli.errors import describe, without_secrets
from catalog.config import masked
from catalog.errors import CatalogError, InvalidInput

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class MissingExtra(CatalogError):
    """An optional dependency of the command is not installed."""


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback shares the store with the "
                   "network).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port, printed).")
@db_option
def serve_command(host: str, port: int, db_url: str | None) -> None:
    """Explore the store in a web browser: verdicts, figures, raw samples, the queue.

    Read-only: the app answers GET only and reads through read-only database sessions (as
    `catalog sql`); on a shared database give it a reader role's URL. Every page is a plain
    link that can be shared. Ctrl-C (or SIGTERM) stops it.

    Example: catalog serve --db postgresql://analyst@db-host/catalog --port 8080
    """
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MissingExtra(
            f"catalog serve needs {exc.name or 'starlette and uvicorn'}: install the serve "
            "extra, pip install 'catalog[serve]'") from None
    from catalog.db import open_catalog
    from catalog.serve.app import create_app
    from catalog.views import read_only_engine

    open_catalog(db_url, create=False).dispose()  # the schema gate: same schema, or an error
    engine = read_only_engine(db_url)
    try:
        listener = _listen(host, port)
        app = create_app(engine, host=host, describe=_page_error)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False,
                                timeout_graceful_shutdown=5)
        bound = listener.getsockname()
        shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        click.echo(f"serving {masked(engine.url)} read-only at http://{shown_host}:{bound[1]}/ "
                   "(Ctrl-C stops)", )
        if host not in _LOOPBACK:
            click.echo(f"Warning: listening on {host}: anyone who can reach it reads the store",
                       err=True)
        stopped: list[int] = []
        # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the handler that
        # was there before: this one, so that a stop is a normal exit (0), not a kill.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda number, _frame: stopped.append(number))
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        engine.dispose()
    click.echo("stopped")
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        # A page still computing (the analysis of a big store) runs in a worker thread that
        # cannot be interrupted and would hold the process: nothing is written, so exit now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a taken port or a bad address is one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot listen on {host!r}: {exc.strerror}; give an address "
                           "of this machine with --host (default 127.0.0.1)") from None
    family, _type, _proto, _name, address = infos[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        hint = ("another program listens there; choose another --port" if exc.errno == errno.EADDRINUSE
                else "choose a port above 1023, or another --host")
        raise InvalidInput(f"cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
    return listener


COMMANDS = [serve_command]


def _page_error(exc: BaseException) -> str | None:
    """A failed page's one line: the CLI's own wording, without secrets."""
    message = describe(exc)
    return without_secrets(message) if message else None
