"""``catalog serve``: the store as a live, read-only web explorer.

:mod:`catalog.serve.app` is the Starlette app (overview, task, samples and queue pages),
:mod:`catalog.serve.store` what the pages read, with the analysis cached per store state.
Like the CLI, this package sits above ingest and analysis (pyproject's import contracts).
Starlette and uvicorn come with the ``serve`` extra: ``pip install 'catalog[serve]'``.
"""
