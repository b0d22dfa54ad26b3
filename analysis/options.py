"""The analysis options: every threshold and setting that changes a number, and the
selection of sampling conditions.

Kept apart from :mod:`analysis.crystallization` (and free of numpy and Polars) so that the
CLI can read the defaults for its options without slowing ``catalog --help``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from catalog.errors import InvalidInput


@dataclass(frozen=True)
class AnalysisOptions:
    """Everything that changes a number; printed with every result as ``thresholds``.

    ``reference_temperature``: the temperature whose seed support the temperature sweep
    measures every temperature's ProbMass against (docs/metrics.md, section 11).
    ``trajectories``: compute checkpoint trajectories (section 12); None: when any stage of
    the selection has more than one checkpoint. ``verdict_support``: with a bootstrap, a
    verdict that holds in fewer than this share of the replicates reads "uncertain".
    """

    tau: float = 0.9
    liquid_threshold: float = 0.1
    nucleation_ratio_threshold: float = 1.0
    probmass_threshold: float = 0.8
    settle_tolerance: float = 0.1
    min_samples: int = 1
    bootstrap: int = 0
    seed: int = 0
    reference_temperature: float = 1.0
    trajectories: bool | None = None
    verdict_support: float = 0.95

    def validate(self, mode: str) -> None:
        if not 0 < self.tau <= 1:
            raise InvalidInput(f"tau must be in (0, 1], got {self.tau}")
        if not 0 < self.verdict_support <= 1:
            raise InvalidInput(
                f"verdict_support must be in (0, 1], got {self.verdict_support}"
            )
        if self.min_samples < 1:
            raise InvalidInput(f"min_samples must be at least 1, got {self.min_samples}")
        if self.bootstrap < 0:
            raise InvalidInput(
                f"bootstrap must be 0 (off) or a number of replicates, got {self.bootstrap}"
            )
        if self.bootstrap and mode == "exact":
            raise InvalidInput(
                "exact probabilities have no sampling noise to bootstrap; "
                "drop --bootstrap or use --mode sampled"
            )


@dataclass(frozen=True)
class ConditionSelection:
    """Which sampling conditions to analyze: runs whose parameter is one of the given values
    (an empty tuple selects every value). ``top_k`` 0 selects runs without top-k."""

    temperature: tuple[float, ...] = ()
    top_p: tuple[float, ...] = ()
    top_k: tuple[int, ...] = ()
    max_new_tokens: tuple[int, ...] = ()

    def filters(self) -> dict[str, tuple]:
        """The parameters that select something: {column: allowed values}."""
        return {name: tuple(values) for name, values in asdict(self).items() if values}
