"""Statistical checks for tests whose expectation comes from the model under test.

A trained (or random) tiny model's answer distribution is whatever training on this machine
gave, so no test may hard-code it. Tests compute the model's exact probabilities instead
(one forward pass, ``ingest.exact``) and check sampled counts against them at a stated
significance level, with a fixed seed:

- :func:`goodness_of_fit`: chi-square goodness of fit of the counts of some named answers
  against their exact probabilities (the rest pooled into one category);
- :func:`homogeneity_pvalue`: chi-square homogeneity of two samplers' counts of the same
  model (e.g. the vLLM backend against the tree sampler), rare texts pooled;
- :func:`simulated_outcomes` / :func:`outcome_pvalue`: a parametric bootstrap for whole
  analyses: the analysis of counts drawn from the exact distributions, replicate by
  replicate, and the Monte Carlo p-value of an observed discrete outcome (a verdict, a
  found seed prompt) among the replicates.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from scipy.stats import chisquare

MIN_EXPECTED = 5.0  # the usual validity condition of the chi-square approximation


def goodness_of_fit(
    observed: Mapping[str, int], probabilities: Mapping[str, float], n: int
) -> tuple[float, int]:
    """Chi-square p-value of ``n`` samples against exact probabilities of named answers.

    ``observed`` maps sampled texts to counts (texts not in ``probabilities`` are allowed);
    ``probabilities`` maps texts to their exact (raw, not renormalized) probabilities. Every
    other text, and the missing mass ``1 - sum(probabilities)``, form one "rest" category.
    Named answers expected fewer than 5 times are pooled into the rest; if the rest is then
    expected fewer than 5 times it is merged into the smallest kept answer. Returns the
    p-value and the number of categories tested (at least 2, or the test means nothing).
    """
    kept = [text for text, p in probabilities.items() if p * n >= MIN_EXPECTED]
    counts = [observed.get(text, 0) for text in kept]
    expected = [probabilities[text] * n for text in kept]
    counts.append(n - sum(counts))
    expected.append(n - sum(expected))
    if expected[-1] < MIN_EXPECTED and len(kept) >= 2:
        smallest = int(np.argmin(expected[:-1]))
        counts[smallest] += counts.pop()
        expected[smallest] += expected.pop()
    assert len(counts) >= 2, f"too few categories for a goodness-of-fit test: {probabilities}"
    return float(chisquare(counts, expected).pvalue), len(counts)


def simulated_outcomes(
    exact,
    sampled,
    outcome: Callable[[dict], Mapping[Hashable, Hashable]],
    *,
    replicates: int,
    seed: int,
    options=None,
) -> list[Mapping[Hashable, Hashable]]:
    """``outcome(analysis document)`` for ``replicates`` analyses of simulated counts.

    ``exact`` and ``sampled`` are :class:`analysis.frames.CountData` of the same units (read
    from the store in exact and in sampled mode). Each replicate draws, for every unit, as
    many valid samples as the sampled run stored, multinomially from the unit's exact
    option distribution, and analyzes them like the sampled counts (same units, same
    invalid counts, same options). This is the distribution of the sampled pipeline's
    outcome if the sampler draws from the model's exact distributions.
    """
    import polars as pl

    from analysis.crystallization import analyze_data

    # the model (family, stage and, where the store has them, checkpoint step) and the prompt;
    # not the sampling condition, which differs between exact and sampled runs by definition
    keys = [
        c for c in ("family", "stage", "step", "task", "prompt")
        if c in sampled.units.columns and c in exact.units.columns
    ]
    units = sampled.units.join(
        exact.units.select(*keys, pl.col("unit").alias("exact_unit")),
        on=keys, how="left", nulls_equal=True,
    )
    assert units["exact_unit"].null_count() == 0, "every sampled unit needs its exact run"
    totals = dict(sampled.counts.group_by("unit").agg(pl.col("value").sum()).iter_rows())
    probabilities: dict[int, tuple[list[str], np.ndarray]] = {}
    # in a fixed order, so a seed gives the same replicates whatever order the store returns
    ordered = exact.counts.sort("unit", "option")
    for (unit,), rows in ordered.group_by(["unit"], maintain_order=True):
        probs = rows["value"].to_numpy().astype(float)
        probabilities[int(unit)] = (rows["option"].to_list(), probs / probs.sum())
    draws = [
        (unit, *probabilities[exact_unit], totals.get(unit, 0))
        for unit, exact_unit in units.select("unit", "exact_unit").iter_rows()
        if exact_unit in probabilities
    ]
    draws.sort(key=lambda draw: draw[0])
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(replicates):
        rows = {"unit": [], "option": [], "value": []}
        for unit, names, probs, n in draws:
            counts = rng.multinomial(n, probs)
            for name, count in zip(names, counts):
                if count:
                    rows["unit"].append(unit)
                    rows["option"].append(name)
                    rows["value"].append(int(count))
        # the sampled data with these counts (same units, conditions, tasks, invalid counts)
        data = replace(sampled, counts=pl.DataFrame(rows, schema=sampled.counts.schema))
        results.append(outcome(analyze_data(data, options).to_dict()))
    return results


def outcome_pvalue(
    observed: Hashable, simulated: Sequence[Hashable]
) -> float:
    """Monte Carlo p-value of a discrete observed outcome: (1 + k) / (1 + R), where k of the
    R simulated outcomes equal it. Small when the simulation rarely gives that outcome."""
    return (1 + sum(outcome == observed for outcome in simulated)) / (1 + len(simulated))


def homogeneity_pvalue(
    first: Mapping[str, int], second: Mapping[str, int], min_expected: float = MIN_EXPECTED
) -> float:
    """Chi-square homogeneity p-value of two count vectors over completion texts. Texts whose
    expected count is below ``min_expected`` in either row are pooled into one "other"
    category (merged into the rarest kept text if it is itself too small); at least three
    categories must remain, or the test means little."""
    from scipy.stats import chi2_contingency

    share = min(sum(first.values()), sum(second.values())) / (
        sum(first.values()) + sum(second.values())
    )
    texts = sorted(first.keys() | second.keys())
    kept = [t for t in texts if (first.get(t, 0) + second.get(t, 0)) * share >= min_expected]
    rows = [
        [c.get(t, 0) for t in kept] + [sum(c.values()) - sum(c.get(t, 0) for t in kept)]
        for c in (first, second)
    ]
    if (rows[0][-1] + rows[1][-1]) * share < min_expected:
        rarest = min(range(len(kept)), key=lambda j: rows[0][j] + rows[1][j])
        for row in rows:
            row[rarest] += row.pop()
    assert len(rows[0]) >= 3, "too few categories for a meaningful test"
    return float(chi2_contingency(rows).pvalue)
