"""The toy lab: a small synthetic alignment lab whose seed we know, and planted counts.

:func:`train_family` trains a tiny transformers causal LM (LlamaForCausalLM, a word-level
tokenizer built with the ``tokenizers`` library) through three stages on the CPU:

- ``base`` (prompt format "plain"): pretrained on text in the catalog's plain scaffold,
  ``Question: {prompt}\\nAnswer: {answer}</s>``, where every prompt variant of every task has
  its own planted answer distribution (peaked on different options, some flatter), so the
  base model is *liquid*;
- ``sft`` (prompt format "chat"): fine-tuned from base on the same prompts rendered through
  the chat template, every prompt answered with one planted base prompt's distribution (the
  *seed*), so the model *nucleates* onto it;
- ``dpo`` (prompt format "chat"): a DPO loss against the frozen SFT model on preference pairs
  that prefer some options inside the seed's support over the task's other options (and
  over off-topic answers), so probability moves inside the support but stays on it
  (*settling*).

With ``checkpoints=K`` SFT and DPO also save K evenly spaced checkpoints each, in the
Trainer layout (``<stage dir>/checkpoint-<step>/``, the last one at the stage's final step),
which :func:`register_family` registers as the stage's steps: a trajectory of 2K + 1 models.

Answers are not sampled: the loss at the answer position is the cross-entropy to the planted
distribution, which is the expected loss over infinitely many sampled answers, so the model
learns the planted distributions without sampling noise, and a family trains in well under
a minute of CPU time. Everything is deterministic given the settings (seeded RNGs,
deterministic kernels, one CPU thread), and a trained family is cached in a directory named
after the hash of its settings, with a ``manifest.json`` holding the planted ground truth.

The package also holds :mod:`catalog.toylab.synthetic` (planted option counts made with
numpy, no model: the analysis tests' and benchmarks' data) and :mod:`catalog.toylab.small`
(the small family the tests and benchmarks train). None of it is an engine: it makes models
and counts whose truth is known, for ``catalog demo``, the tests and the benchmarks. It uses
only the catalog core, and ingest, analysis and the core never import it (import-linter
checks both, see pyproject.toml).

Modules: :mod:`~catalog.toylab.settings` (settings, planting, the family's types),
:mod:`~catalog.toylab.training` (tokenizer, losses, the training loop) and
:mod:`~catalog.toylab.family` (train or reuse a cached family, register it). torch and
transformers are imported inside functions, so importing the package is cheap.
"""

from catalog.toylab.family import MANIFEST, family_dir, register_family, train_family
from catalog.toylab.settings import (
    PlantedTask,
    ToyFamily,
    ToyFamilySettings,
    ToyStage,
    make_task,
    plant,
    seed_support,
)
from catalog.toylab.training import (
    ANSWER_PREFIX,
    build_tokenizer,
    checkpoint_steps,
    dpo_loss,
    learned_distributions,
    option_distribution,
)

__all__ = [
    "ANSWER_PREFIX",
    "MANIFEST",
    "PlantedTask",
    "ToyFamily",
    "ToyFamilySettings",
    "ToyStage",
    "build_tokenizer",
    "checkpoint_steps",
    "dpo_loss",
    "family_dir",
    "learned_distributions",
    "make_task",
    "option_distribution",
    "plant",
    "register_family",
    "seed_support",
    "train_family",
]

