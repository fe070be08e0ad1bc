"""Fine-tuning a checkpoint on the downstream classes: a fresh linear head, every parameter trained.

The head learns at ``lr`` and the backbone at ``backbone_lr`` (smaller for the "limited" fine-tuning of
the paper's sources; equal to ``lr`` for plain full fine-tuning; 0 keeps the backbone's weights, though
batch-norm statistics still adapt). Batch norm runs in train mode while training, eval mode for testing.
The train/test split, the head's initialisation, the data order and the augmentation draws depend only
on the seed, so every checkpoint is fine-tuned and scored under identical conditions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from freeenergy.data import ImageSet
from freeenergy.data.augment import random_crop_flip
from freeenergy.data.splits import split_per_class
from freeenergy.models.evaluate import evaluate

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


@dataclass
class FinetuneResult:
    test_acc: float
    test_loss: float
    train_loss: float  # mean training loss over the last epoch
    initial_test_acc: float  # with the fresh head, before any step
    initial_test_loss: float
    steps: int


def finetune_split(
    downstream: ImageSet, test_fraction: float, images_per_class: int | None, seed: int
) -> tuple[ImageSet, ImageSet]:
    """(train, test) images of every downstream class; at most ``images_per_class`` train images per class."""
    train, test = split_per_class(downstream, test_fraction, seed)
    if images_per_class is None:
        return train, test
    generator = torch.Generator().manual_seed(seed)
    keep = [
        members[torch.randperm(len(members), generator=generator)[:images_per_class]]
        for members in (torch.nonzero(train.labels == c).flatten() for c in range(train.num_classes))
    ]
    return train.subset(torch.cat(keep).sort().values), test


def with_fresh_head(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """A copy of ``model`` whose classifier is a new ``num_classes``-way linear layer, initialised from ``seed``."""
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(num_classes)
    return model.to(device)


def build_finetune_optimizer(model: nn.Module, ft_cfg: DictConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the head at ``lr``, the backbone at ``backbone_lr``."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in head_ids], "lr": ft_cfg.lr},
        {"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": ft_cfg.backbone_lr},
    ]
    if ft_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=ft_cfg.momentum, weight_decay=ft_cfg.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=ft_cfg.weight_decay)


def build_finetune_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)


def finetune(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    ft_cfg: DictConfig,
    seed: int,
    eval_batch_size: int = 1024,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` with a fresh head on ``train`` (uint8 images, labels on the model's
    device); ``preprocess`` maps stored images to model inputs. The input model is left unchanged."""
    train_images, train_labels = train
    num_classes = int(train_labels.max()) + 1
    model = with_fresh_head(model, num_classes, seed)
    initial = evaluate(model, *test, preprocess, eval_batch_size)
    steps_per_epoch = len(train_labels) // ft_cfg.batch_size  # drop the last partial batch, as batch norm prefers
    optimizer = build_finetune_optimizer(model, ft_cfg)
    scheduler = build_finetune_scheduler(optimizer, ft_cfg.schedule, steps_per_epoch * ft_cfg.epochs)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(ft_cfg.epochs):
        order = torch.randperm(len(train_labels), generator=generator).to(train_labels.device)
        epoch_loss = torch.zeros((), device=train_labels.device)
        for step in range(steps_per_epoch):
            index = order[step * ft_cfg.batch_size : (step + 1) * ft_cfg.batch_size]
            inputs = random_crop_flip(
                preprocess(train_images[index]), ft_cfg.augment.padding, ft_cfg.augment.flip, generator
            ).contiguous(memory_format=memory_format)
            loss = F.cross_entropy(model(inputs), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.detach()
    final = evaluate(model, *test, preprocess, eval_batch_size)
    return FinetuneResult(
        test_acc=final.accuracy,
        test_loss=final.loss,
        train_loss=epoch_loss.item() / steps_per_epoch,
        initial_test_acc=initial.accuracy,
        initial_test_loss=initial.loss,
        steps=steps_per_epoch * ft_cfg.epochs,
    )
