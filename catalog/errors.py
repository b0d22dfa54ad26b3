"""Named library errors.

Every error a user can cause (bad input, wrong URL, stale schema, missing model...) is a
:class:`CatalogError` whose message is one line saying what is wrong and what to do. The CLI
turns these into ``Error: <message>`` and exit code 1; anything else is a bug.
"""


class CatalogError(Exception):
    """Base class: a user-facing error with a one-line, actionable message."""


class DatabaseUnreachable(CatalogError):
    """The database URL is malformed or the server cannot be reached."""


class NoCatalog(CatalogError):
    """A command that only reads found no catalog: a missing SQLite file, an empty database."""


class SchemaOutOfDate(CatalogError):
    """The database schema is behind (or ahead of) this version of the catalog."""


class NotFound(CatalogError):
    """A named family, model, task or prompt is not in the catalog."""


class InvalidInput(CatalogError):
    """A file, option or value given by the user is malformed."""


class ModelLoadError(CatalogError):
    """A model cannot be loaded safely (missing weights, pickles, remote code...)."""
