"""The study's headline numbers as one flat JSON (``headline.json``), and their comparison across replicates.

A retrained study is not bit-identical on another machine (float rounding differs with the CPU's vector
units and thread layout, and training amplifies it), so its numbers are statistical: a rerun is judged by
whether each headline number falls within the spread that independent replicates of the study show.

- ``headline_numbers`` picks the numbers the README's verdict rests on: Table 1's free-energy rows (r and
  interval over runs; r and permutation p over settings) and every paired comparison |r(F, Y)| − |r(X, Y)|
  with its verdict, for the headline downstream measures.
- ``reference`` combines the replicates' ``headline.json`` into the committed reference (each number's
  values, mean and spread = max − min).
- ``compare`` says, per number, whether a rerun lies within the reference: inside [min − spread, max + spread]
  (the replicates' own disagreement as the margin), and for a verdict whether it matches every replicate's
  ("agrees"), only some of them (the replicates disagree, so the verdict is not a stable result), or none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from freeenergy.analysis.stats import POOLED, lookup

HEADLINE_TARGETS = ("finetune_acc", "fewshot_5shot_acc")


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def headline_numbers(correlations: pd.DataFrame, settings: pd.DataFrame, paired: pd.DataFrame) -> dict[str, Any]:
    """Flat ``{name: number or verdict}`` of the headline results (``correlations`` on final checkpoints)."""
    numbers: dict[str, Any] = {}
    for target in HEADLINE_TARGETS:
        for metric in ("free_energy", "train_loss", "hessian_trace"):
            row = lookup(correlations, POOLED, metric, target)
            if row is not None:
                for field in ("r", "ci_low", "ci_high"):
                    numbers[f"table1/runs/{metric}/{target}/{field}"] = _finite(row[field])
            match = settings[(settings.metric == metric) & (settings.target == target) & (settings.method == "pearson")]
            if len(match):
                numbers[f"table1/settings/{metric}/{target}/r"] = _finite(match.iloc[0].r)
                numbers[f"table1/settings/{metric}/{target}/p"] = _finite(match.iloc[0].p)
        for row in paired[paired.target == target].itertuples():
            key = f"paired/{row.unit}/{row.rival}/{target}"
            numbers[f"{key}/difference"] = _finite(row.difference)
            numbers[f"{key}/verdict"] = row.verdict
    return numbers


def reference(replicates: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per number: every replicate's value, and for numbers their mean and spread (max − min)."""
    names = sorted(set().union(*(numbers.keys() for numbers in replicates.values())))
    out = {}
    for name in names:
        values = {replicate: numbers.get(name) for replicate, numbers in replicates.items()}
        entry: dict[str, Any] = {"values": values}
        numeric = [v for v in values.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric and len(numeric) == len(values):
            entry.update(
                mean=sum(numeric) / len(numeric),
                spread=max(numeric) - min(numeric),
                low=min(numeric),
                high=max(numeric),
            )
        out[name] = entry
    return out


@dataclass(frozen=True)
class Comparison:
    name: str
    yours: Any
    replicates: str  # the replicates' values, for display
    verdict: str  # within | outside | agrees | disagrees | not comparable


def compare(yours: dict[str, Any], committed: dict[str, dict[str, Any]]) -> list[Comparison]:
    """One ``Comparison`` per committed number (see the module docstring for the rule)."""
    out = []
    for name, entry in committed.items():
        mine, values = yours.get(name), entry["values"]
        shown = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values.values())
        if mine is None and all(v is None for v in values.values()):  # e.g. a static ranker among seeds
            out.append(Comparison(name, mine, shown, "undefined, as in every replicate"))
        elif "spread" in entry and isinstance(mine, (int, float)):
            margin = entry["spread"]
            inside = entry["low"] - margin <= mine <= entry["high"] + margin
            out.append(Comparison(name, mine, shown, "within" if inside else "outside"))
        elif isinstance(mine, str) and all(isinstance(v, str) for v in values.values()):
            if all(v == mine for v in values.values()):
                verdict = "agrees"
            elif mine in values.values():  # the replicates themselves disagree: this verdict is not stable
                verdict = "one of the replicates'"
            else:
                verdict = "disagrees"
            out.append(Comparison(name, mine, shown, verdict))
        else:
            out.append(Comparison(name, mine, shown, "not comparable"))
    return out
