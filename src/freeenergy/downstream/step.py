"""The downstream step of the study: fine-tuning and few-shot accuracy of every checkpoint, one record per kind.

Both evaluations use the held-out classes ``FewShotData.downstream``, with images kept uint8 on the device
and normalised per batch. ``finetune.json`` holds test accuracy and loss after fine-tuning with a fresh
head; ``fewshot.json`` holds, per (N-way, K-shot, classifier), the mean query accuracy over the episodes
with its 95% interval. A record that is finished and current is skipped unless ``downstream.overwrite=true``
(``freeenergy.records.provenance``); a checkpoint that fails to load is reported by name and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from freeenergy.data import FewShotData, data_fingerprint, load_data
from freeenergy.downstream.config import logistic_options, validate_against_data, validate_downstream_config
from freeenergy.downstream.episodes import Episodes, sample_episodes
from freeenergy.downstream.finetune import FinetuneResult, finetune, finetune_split
from freeenergy.downstream.probe import augmented_features, episode_accuracies, summarize
from freeenergy.memory_format import conv_memory_format
from freeenergy.models.checkpoint import load_or_report
from freeenergy.records.checkpoints import Checkpoint, checkpoints_of_shard
from freeenergy.records.provenance import Outcome, run_checkpoint_step
from freeenergy.records.settings import downstream_settings
from freeenergy.runtime import resolve_device, set_threads


@dataclass
class DownstreamTask:
    """Everything shared by all checkpoints: data on the device, the fine-tuning split, the episodes."""

    cfg: DictConfig  # downstream.*
    device: torch.device
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    memory_format: torch.memory_format
    images: torch.Tensor  # all downstream images (uint8), for the few-shot features
    finetune_train: tuple[torch.Tensor, torch.Tensor]  # (uint8 images, labels)
    finetune_test: tuple[torch.Tensor, torch.Tensor]
    episodes: dict[int, Episodes]  # by K; empty unless few-shot is asked for


def prepare_task(ds_cfg: DictConfig, data: FewShotData, device: torch.device) -> DownstreamTask:
    """Move the downstream data to the device, split it for fine-tuning and draw the episodes (seeded)."""
    memory_format = conv_memory_format(ds_cfg.channels_last, device)
    train, test = finetune_split(
        data.downstream, ds_cfg.finetune.test_fraction, ds_cfg.finetune.images_per_class, ds_cfg.seed
    )
    fs = ds_cfg.fewshot
    episodes = (
        {
            k: sample_episodes(data.downstream.labels, fs.n_way, k, fs.n_query, fs.episodes, ds_cfg.seed)
            for k in fs.shots
        }
        if "fewshot" in ds_cfg.kinds
        else {}
    )
    return DownstreamTask(
        cfg=ds_cfg,
        device=device,
        preprocess=lambda images: data.normalize(images).contiguous(memory_format=memory_format),
        memory_format=memory_format,
        images=data.downstream.images.to(device),
        finetune_train=(train.images.to(device), train.labels.to(device)),
        finetune_test=(test.images.to(device), test.labels.to(device)),
        episodes=episodes,
    )


def _common_fields(checkpoint: Checkpoint, task: DownstreamTask, kind: str, seconds: float) -> dict:
    return {
        "run_id": checkpoint.run_id,
        "epoch": checkpoint.epoch,
        "seed": task.cfg.seed,
        "wall_time_s": seconds,
        "device": str(task.device),
        "config": OmegaConf.to_container(task.cfg[kind], resolve=True),
    }


def finetune_record(model: nn.Module, checkpoint: Checkpoint, task: DownstreamTask) -> dict:
    """``finetune.json``: ``downstream.finetune.repeats`` fine-tunings (seeds ``downstream.seed`` + r: head, data
    order, augmentation; one train/test split), their mean test accuracy and its standard errors."""
    start = time.perf_counter()
    ft = task.cfg.finetune
    results = [
        finetune(
            model,
            task.finetune_train,
            task.finetune_test,
            task.preprocess,
            ft,
            task.cfg.seed + repeat,
            task.cfg.eval_batch_size,
            task.memory_format,
        )
        for repeat in range(ft.repeats)
    ]
    summary = summarize_repeats(results, len(task.finetune_test[1]))
    return (
        summary
        | {
            "epochs": ft.epochs,
            "lr": ft.lr,
            "backbone_lr": ft.backbone_lr,
            "batch_size": ft.batch_size,
            "optimizer": ft.optimizer,
            "images_per_class": ft.images_per_class,
            "train_images": len(task.finetune_train[1]),
            "test_images": len(task.finetune_test[1]),
        }
        | _common_fields(checkpoint, task, "finetune", time.perf_counter() - start)
    )


def summarize_repeats(results: list[FinetuneResult], test_images: int) -> dict:
    """Means over the repeats and the standard errors of the mean test accuracy: ``test_acc_seed_se`` (sd of the
    repeats / √repeats; NaN for one repeat), ``test_acc_binomial_se`` (√(p(1 − p)/test images): the test set as
    a sample of the classes' images) and ``test_acc_se``, the two combined in quadrature."""
    accuracies = np.array([r.test_acc for r in results])
    mean = float(accuracies.mean())
    seed_se = float(accuracies.std(ddof=1) / math.sqrt(len(results))) if len(results) > 1 else math.nan
    binomial_se = math.sqrt(mean * (1 - mean) / test_images)
    return {
        "test_acc": mean,
        "test_loss": float(np.mean([r.test_loss for r in results])),
        "train_loss": float(np.mean([r.train_loss for r in results])),
        "initial_test_acc": float(np.mean([r.initial_test_acc for r in results])),
        "initial_test_loss": float(np.mean([r.initial_test_loss for r in results])),
        "steps": results[0].steps,
        "repeats": len(results),
        "test_acc_per_repeat": accuracies.tolist(),
        "train_loss_per_repeat": [r.train_loss for r in results],
        "test_acc_seed_se": seed_se,
        "test_acc_binomial_se": binomial_se,
        "test_acc_se": math.hypot(binomial_se, seed_se if math.isfinite(seed_se) else 0.0),
    }


def fewshot_record(model: nn.Module, checkpoint: Checkpoint, task: DownstreamTask) -> dict:
    start = time.perf_counter()
    fs = task.cfg.fewshot
    features = augmented_features(
        model,
        task.images,
        task.preprocess,
        task.cfg.eval_batch_size,
        fs.support_views,
        fs.augment.padding,
        fs.augment.flip,
        task.cfg.seed,
    )
    results = []
    for k_shot, episodes in task.episodes.items():
        for classifier in fs.classifiers:
            accuracies = episode_accuracies(
                features, episodes, classifier, logistic_options(task.cfg), fs.episode_batch
            )
            score = summarize(accuracies)
            results.append(
                {
                    "n_way": fs.n_way,
                    "k_shot": k_shot,
                    "n_query": fs.n_query,
                    "classifier": classifier,
                    "mean_acc": score.mean_acc,
                    "ci95": score.ci95,
                    "episodes": score.episodes,
                    "ci95_method": "student-t, episodes - 1 degrees of freedom",
                }
            )
    return {"results": results, "feature_dim": features.shape[-1]} | _common_fields(
        checkpoint, task, "fewshot", time.perf_counter() - start
    )


RECORD_MAKERS: dict[str, Callable[[nn.Module, Checkpoint, DownstreamTask], dict]] = {
    "finetune": finetune_record,
    "fewshot": fewshot_record,
}


def summary_line(name: str, records: dict[str, dict]) -> str:
    parts = []
    if "finetune" in records:
        r = records["finetune"]
        parts.append(
            f"finetune {100 * r['test_acc']:.1f} ± {100 * r['test_acc_se']:.1f}% over {r['repeats']} seed(s), train "
            f"loss {r['train_loss']:.3f} (fresh head {100 * r['initial_test_acc']:.1f}%, {r['wall_time_s']:.1f}s)"
        )
    if "fewshot" in records:
        r = records["fewshot"]
        scores = ", ".join(
            f"{s['n_way']}w{s['k_shot']}s {s['classifier']} {100 * s['mean_acc']:.1f}±{100 * s['ci95']:.1f}%"
            for s in r["results"]
        )
        parts.append(f"fewshot {scores} ({r['wall_time_s']:.1f}s)")
    return f"{name}: " + "; ".join(parts)


def evaluate_checkpoint(checkpoint: Checkpoint, kinds: list[str], task: DownstreamTask) -> Outcome:
    model = load_or_report(checkpoint, task.device)
    if model is None:
        return Outcome(checkpoint.name, "failed")
    model = model.to(memory_format=task.memory_format)
    records = {}
    for kind in kinds:
        records[kind] = RECORD_MAKERS[kind](model, checkpoint, task)
        checkpoint.write_record(kind, records[kind])
    tqdm.write(summary_line(checkpoint.name, records))
    return Outcome(checkpoint.name, "evaluated", records)


def run_downstream(cfg: DictConfig) -> list[Outcome]:
    """Fine-tune and/or few-shot-evaluate the checkpoints of ``cfg.paths.runs`` (``downstream.kinds``; each kind
    on the checkpoints ``downstream.checkpoints.<kind>`` selects).

    Which records are reused, recomputed or refused is decided before any compute (``plan_step``).
    """
    ds_cfg = cfg.downstream
    validate_downstream_config(ds_cfg)
    set_threads(cfg.get("num_threads"))
    kinds = list(dict.fromkeys(ds_cfg.kinds))
    index, count = cfg.shard.index, cfg.shard.count
    selected = {kind: checkpoints_of_shard(cfg.paths.runs, index, count, ds_cfg.checkpoints[kind]) for kind in kinds}
    checkpoints = sorted({c for chosen in selected.values() for c in chosen}, key=lambda c: (c.run_id, c.epoch))
    device = resolve_device(cfg.device)

    def prepare() -> Callable[[Checkpoint, list[str]], Outcome]:
        data = load_data(cfg.data)
        validate_against_data(ds_cfg, data.downstream)
        task = prepare_task(ds_cfg, data, device)
        return lambda checkpoint, todo: evaluate_checkpoint(checkpoint, todo, task)

    return run_checkpoint_step(
        f"downstream ({', '.join(kinds)})",
        checkpoints,
        {kind: downstream_settings(cfg, kind) for kind in kinds},
        ds_cfg.overwrite,
        "downstream.overwrite",
        device,
        "evaluate",
        prepare,
        cfg.progress,
        cfg.paths.runs,
        selected={kind: set(chosen) for kind, chosen in selected.items()},
        data=data_fingerprint(cfg.data),
    )
