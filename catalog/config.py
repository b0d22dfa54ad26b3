"""Where the catalog's database is.

Resolution order: an explicit ``--db URL``, else ``$CATALOG_DATABASE_URL``, else
``sqlite:///catalog.db`` in the current directory. URLs are only ever shown masked.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from catalog.errors import DatabaseUnreachable

ENV_VAR = "CATALOG_DATABASE_URL"
DEFAULT_URL = "sqlite:///catalog.db"


def database_url(explicit: str | None = None) -> URL:
    """Return the database URL to use, normalized (``postgresql://`` uses psycopg 3)."""
    if explicit is not None and not explicit.strip():
        raise DatabaseUnreachable(
            "--db is empty; give a database URL such as sqlite:///catalog.db (or leave --db "
            f"out to use ${ENV_VAR})"
        )
    raw = explicit or os.environ.get(ENV_VAR) or DEFAULT_URL
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Never echo the raw string: it may hold a password.
        raise DatabaseUnreachable(
            "the database URL is malformed; use e.g. sqlite:///catalog.db or "
            "postgresql://user@host:5432/dbname (--db or $CATALOG_DATABASE_URL)"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def masked(url: URL | str) -> str:
    """The URL as text with any password replaced by ``***``."""
    return make_url(url).render_as_string(hide_password=True)
