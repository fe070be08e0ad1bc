"""Rebuild a pretrained model from a checkpoint folder."""

from __future__ import annotations

import torch
from torch import nn

from freeenergy.models.factory import create_model
from freeenergy.records import Checkpoint, load_torch


def load_checkpoint_model(checkpoint: Checkpoint, device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's model (architecture from its run record, weights from ``model.pt``), in eval mode."""
    run = checkpoint.run_record()
    config = run["config"]
    model_cfg = dict(config["model"])
    model = create_model(model_cfg.pop("name"), num_classes=run["num_classes"], **model_cfg)
    model.load_state_dict(load_torch(checkpoint.model_path, map_location=device))
    return model.to(device).eval()
