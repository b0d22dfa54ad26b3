"""catalog: a results catalog for randomness-crystallization studies.

The core library (configuration, engine and session, ORM schema, registry, import/export)
lives here and never imports torch; sampling lives in :mod:`ingest`, metrics and reports in
:mod:`analysis`.
"""

__version__ = "0.1.0"
