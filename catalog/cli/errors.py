"""What the CLI's error boundary (:class:`catalog.cli.CatalogGroup`) says about a failure:
one line naming what failed and what to do, never a password."""

from __future__ import annotations

import re

import click
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from catalog.errors import CatalogError
from catalog.limits import shown

# user:password@ in any URL (a usage error echoes argv; a driver error may echo a DSN).
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
_PG_PASSWORD = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)
_LONGEST_REASON = 200
# PostgreSQL SQLSTATEs (appendix A of its manual).
_PERMISSION_DENIED = "42501"
_CANCELLED = "57014"  # statement_timeout, or a cancel request (Ctrl-C)
_RETRYABLE = ("40001", "40P01")  # serialization failure, deadlock
_CONNECTION_CLASS = "08"


class Interrupted(click.ClickException):
    """Ctrl-C: the conventional exit code of a process ended by SIGINT."""

    exit_code = 130


def without_secrets(message: str) -> str:
    """The message with every URL password (and ``password=...``) replaced by ``***``."""
    return _PG_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", message))


def describe(exc: BaseException) -> str | None:
    """The one line for an expected failure, or None for a bug (the traceback shows)."""
    if isinstance(exc, CatalogError):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        return _database(exc)
    if isinstance(exc, OSError):
        where = exc.filename or "a file"
        return (f"cannot use {where}: {exc.strerror or exc}; check the path, its folder's "
                "permissions and free space")
    return None


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's first line (never SQLAlchemy's text, which quotes the whole statement)."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    reason = lines[0] if lines else type(original).__name__
    return reason if len(reason) <= _LONGEST_REASON else shown(reason)[1:-1]


def _database(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    code = getattr(original, "sqlstate", None) or ""
    reason = _reason(exc)
    lowered = reason.lower()
    if code == _PERMISSION_DENIED or "readonly database" in lowered:
        return (f"permission denied ({reason}); this login may not make the change: use "
                "--db with a writer role, or the tables' owner for schema changes")
    if code == _CANCELLED:
        return (f"the statement was cancelled ({reason}): it ran past the statement timeout "
                "or was interrupted; give it more time (catalog sql --timeout) or ask less")
    if code in _RETRYABLE:
        return (f"another process changed the same rows at once ({reason}); the change was "
                "rolled back: run the command again")
    if "database is locked" in lowered or "database is busy" in lowered:
        return (f"the database is busy ({reason}): another process holds its write lock; "
                "run the command again when it is done")
    if isinstance(exc, IntegrityError):
        return (f"the database refused the change ({reason}); the change was rolled back: "
                "check the values given")
    if code.startswith(_CONNECTION_CLASS) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return (f"lost the connection to the database ({reason}); check that the server is "
                "up and run the command again")
    return (f"the database refused the command ({reason}); its unfinished change was rolled "
            "back (run with --debug for the details)")
