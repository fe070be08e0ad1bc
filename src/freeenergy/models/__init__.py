"""Models: timm backbones, their penultimate features and classifier heads."""

from freeenergy.models.factory import MODELS, create_model, penultimate_features
from freeenergy.models.checkpoint import load_checkpoint_model

__all__ = ["MODELS", "create_model", "penultimate_features", "load_checkpoint_model"]
