"""The catalog's closed sets of values, defined once.

The ORM schema's CHECK constraints (:mod:`catalog.schema`), the library's validation
(:mod:`catalog`, :mod:`ingest`, :mod:`analysis`) and the CLI's ``click.Choice`` options all
read these tuples. Migrations keep their own frozen copies (they are history), so changing a
set that a CHECK constraint uses needs a new migration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

# How a run measured a distribution: sampled counts, or exact option probabilities.
RUN_MODES = ("sampled", "exact")
# A run's place in the work queue.
RUN_STATUSES = ("pending", "running", "done", "failed")
# Why a sample counts as no option (docs/normalization.md); a run stores a count for each.
INVALID_REASONS = ("no_answer", "ambiguous", "off_category", "out_of_range")
# Closed tasks have a fixed option list; open tasks take the options as observed.
TaskKind = Literal["closed", "open"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
# How a model is prompted: its tokenizer's chat template, or the plain completion scaffold.
PROMPT_FORMATS = ("chat", "plain")
# Where and in what precision a model is loaded for ingest.
DEVICES = ("auto", "cpu", "cuda")
# How the vLLM backend seeds its samples: the engine once per generate call, or each request.
VLLM_SEEDING_MODES = ("engine", "request")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Files of counts (catalog import-counts / catalog export).
COUNT_FILE_FORMATS = ("csv", "parquet")
# Field maps of other tools' generation files (catalog import-completions --preset).
IMPORT_PRESETS = ("vllm", "lm-eval", "inspect")
# Text renderings of an analysis result (catalog analyze --format).
RESULT_FORMATS = ("table", "json", "csv")
# Renderings of the work queue's progress (catalog status --format).
STATUS_FORMATS = ("table", "json")
# What a PostgreSQL login role may do to a shared catalog (catalog db create-role).
ROLE_KINDS = ("reader", "writer")
# Where catalog launch starts its workers (through submitit).
LAUNCH_EXECUTORS = ("slurm", "local")


def sql_in(column: str, values: Iterable[str]) -> str:
    """A CHECK constraint's SQL text: ``column IN ('a', 'b')``."""
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"
