"""Models: timm backbones, their penultimate features and classifier heads."""

from freeenergy.models.checkpoint import load_checkpoint_model
from freeenergy.models.factory import MODELS, create_model, penultimate_features

__all__ = ["MODELS", "create_model", "penultimate_features", "load_checkpoint_model"]
