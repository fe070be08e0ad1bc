"""Rank your own checkpoints by pretraining free energy: checkpoint files + an ImageFolder → a ranked table.

``python scripts/rank.py rank.model=<timm arch> 'rank.checkpoints=[<file or glob>,...]' rank.data=<ImageFolder>``
(``conf/rank/default.yaml``; README "Rank your own checkpoints"). In Python: ``run_rank(cfg)`` with that config.
The package imports nothing heavy itself (``run_rank`` loads torch on first use), so ``scripts/rank.py`` checks
the paths with the torch-free ``rank.inputs`` first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RankResult", "run_rank"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from freeenergy.rank import command

        return getattr(command, name)
    raise AttributeError(f"module 'freeenergy.rank' has no attribute {name!r}")
