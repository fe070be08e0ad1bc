"""Rank your own checkpoints by pretraining free energy: checkpoint files + an ImageFolder → a ranked table.

``python scripts/rank.py rank.model=<timm arch> 'rank.checkpoints=[<file or glob>,...]' rank.data=<ImageFolder>``
(``conf/rank/default.yaml``; README "Rank your own checkpoints"). In Python: ``run_rank(cfg)`` with that config.
"""

from freeenergy.rank.command import RankResult, run_rank

__all__ = ["RankResult", "run_rank"]
