"""Downstream performance of pretraining checkpoints on held-out classes: fine-tuning and few-shot probes."""

from freeenergy.downstream.episodes import Episodes, sample_episodes
from freeenergy.downstream.finetune import FinetuneResult, finetune, finetune_split
from freeenergy.downstream.probe import FewShotScore, LogisticOptions, episode_accuracies, fit_logistic, summarize
from freeenergy.downstream.step import run_downstream

__all__ = [
    "Episodes",
    "sample_episodes",
    "FinetuneResult",
    "finetune",
    "finetune_split",
    "FewShotScore",
    "LogisticOptions",
    "episode_accuracies",
    "fit_logistic",
    "summarize",
    "run_downstream",
]
