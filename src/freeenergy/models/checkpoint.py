"""Rebuild a pretrained model from a checkpoint folder."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from freeenergy.models.factory import create_model
from freeenergy.models.state_dict import CheckpointError, load_weights, read_state_dict
from freeenergy.records.checkpoints import Checkpoint


def load_checkpoint_model(checkpoint: Checkpoint, device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's model (architecture from its run record, weights from ``model.pt``), in eval mode.

    Raises ``CheckpointError`` (``NonFiniteWeightsError`` for NaN/inf weights) naming the file and what is wrong.
    """
    run = checkpoint.run_record()
    config = run["config"]
    model_cfg = dict(config["model"])
    model = create_model(model_cfg.pop("name"), num_classes=run["num_classes"], **model_cfg)
    load_weights(model, read_state_dict(checkpoint.model_path), checkpoint.model_path)
    return model.to(device).eval()


def load_or_report(checkpoint: Checkpoint, device: str | torch.device = "cpu") -> nn.Module | None:
    """The checkpoint's model, or None after printing why it failed to load (a sweep goes on without it)."""
    try:
        return load_checkpoint_model(checkpoint, device)
    except CheckpointError as error:
        tqdm.write(f"{checkpoint.name}: FAILED to load, skipped. {error}")
    except Exception as error:  # a broken run record or folder must not stop the sweep either
        tqdm.write(f"{checkpoint.name}: FAILED to load, skipped ({type(error).__name__}: {error})")
    return None
