"""Counts and raw generations into the catalog.

``import_counts`` stores counts sampled elsewhere (another sampler, an API model, a paper's
released data), from CSV or Parquet. One row is the count of one option for one (model,
task, prompt):

    family,stage,model,task,prompt,option,count
    olmo-2-1124-7b,base,allenai/OLMo-2-1124-7B,digit,plain,7,412

``import_completions`` stores raw generations (CSV, Parquet or JSON Lines): one record per
generation (``completion``, optional ``count``, default 1) or per prompt with a list
(``completions``). Their texts are normalized with the task's normalizer, as ingested
samples are, and stored as completions and option counts, so ``catalog renormalize``
re-derives them like ingested runs.

Optional columns of both: ``stage_order`` (else base=0, sft=1, dpo=2, rl/rlvr/instruct=3),
``step`` (the model is that checkpoint of its stage), ``prompt_text`` (stored with a new
prompt; without a ``prompt`` key the task's prompt of that text is used, else a key made
from the text), ``prompt_position`` (the prompt id of a new prompt key, see below) and the
sampling condition, ``temperature, top_p, top_k, max_new_tokens,
scaffold`` (unknown fields stay null; a record with none of them has the "imported"
condition, see :mod:`catalog.conditions`); import-counts also ``n_invalid`` (samples whose
answer was not an option; one value per run).

Prompt ids (``prompts.position``, which the analysis uses, e.g. for its even/odd held-out
split) do not depend on the order of the file's rows: the prompt keys an import adds to a
task take the positions given in ``prompt_position``, and those without one take the
smallest free positions in key order (code point order). A stored key keeps its position
(a different ``prompt_position`` for it is refused), so bundled tasks keep their file order.

A run is one (model, task, prompt, condition); its unit key is a hash of those and
"import", so importing a file again replaces its runs instead of adding to them (imports
of counts and of completions of one run replace each other).

Files are read in chunks (:mod:`catalog.records`): memory stays bounded however long the
file is. Each chunk is checked with vectorized Polars expressions, then written with bulk
statements (PostgreSQL COPY, SQLite executemany), all in one transaction: a bad record
fails the import with its row or line and column, and nothing from the file is stored.
Values that must agree across the file (a model's family, a prompt's text, a run's
n_invalid) are checked against what earlier chunks said.

Where each job lives: :mod:`catalog.imports.base` (what every import does with a chunk),
:mod:`catalog.imports.counts` and :mod:`catalog.imports.completions` (what their records
say), :mod:`catalog.bulk` (the bulk writes). Export: :mod:`catalog.export`.
"""

from catalog.imports.base import CONDITION_COLUMNS, ImportSummary, import_unit_key
from catalog.imports.completions import PRESETS, import_completions
from catalog.imports.counts import REQUIRED_COLUMNS, import_counts

__all__ = [
    "CONDITION_COLUMNS",
    "PRESETS",
    "REQUIRED_COLUMNS",
    "ImportSummary",
    "import_completions",
    "import_counts",
    "import_unit_key",
]
