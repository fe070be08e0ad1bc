"""Pretraining sweeps: SGD on the upstream classes, checkpoints at configured epochs."""

from freeenergy.pretrain.trainer import run_pretraining

__all__ = ["run_pretraining"]
