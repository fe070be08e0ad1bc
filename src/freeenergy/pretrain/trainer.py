"""Pretraining with SGD and cross-entropy on the upstream classes, checkpointed and resumable.

A run checks its config and data sizes, then writes ``run.json`` (status ``running``), a checkpoint folder
with ``model.pt`` and ``pretrain.json`` at each checkpoint epoch (the configured ones up to
``train.epochs``, and always the last), and ``resume.pt`` (model, optimizer, scheduler, data-order RNG)
after every epoch. Killed midway, it resumes from ``resume.pt`` to the same result; dead of an exception,
it is marked ``failed``; finished (status ``done``) and verified, a rerun does nothing.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from freeenergy.data import FewShotData, data_fingerprint, load_data
from freeenergy.data.augment import random_crop_flip
from freeenergy.memory_format import conv_memory_format
from freeenergy.models import create_model
from freeenergy.models.evaluate import evaluate
from freeenergy.pretrain.config import checkpoint_epochs_note, validate_against_data, validate_pretrain_config
from freeenergy.pretrain.verify import adopt_run_folder, rebuild_run_record, verify_run
from freeenergy.records.checkpoints import Checkpoint, check_committed_study, epoch_dirname
from freeenergy.records.identity import identity_config, run_id_from_identity
from freeenergy.records.io import (
    RecordError,
    clean_stale_tmp,
    load_torch,
    model_fields,
    read_json,
    save_torch,
    write_json,
)
from freeenergy.records.kinds import DATA_FINGERPRINT, MODEL_FILE, PRETRAIN_RECORD, RESUME_FILE, RUN_FILE
from freeenergy.runtime import (
    progress_bar,
    resolve_device,
    runtime_differences,
    runtime_info,
    set_threads,
    warn_runtime_mismatch,
)

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    lr: float
    seconds: float


def build_optimizer(model: nn.Module, optim_cfg: DictConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=optim_cfg.lr,
        momentum=optim_cfg.momentum,
        weight_decay=optim_cfg.weight_decay,
        nesterov=optim_cfg.nesterov and optim_cfg.momentum > 0,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: DictConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch learning-rate schedule: cosine to zero, constant, or ×0.1 at the step epochs."""
    if train_cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_cfg.epochs)
    if train_cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train_cfg.step_epochs), gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)


class Pretraining:
    """One pretraining run: its model, optimizer, data on the device, and its folder."""

    def __init__(self, cfg: DictConfig):
        validate_pretrain_config(cfg)
        self.cfg = cfg
        self.identity = identity_config(cfg)
        self.run_id = run_id_from_identity(self.identity)
        self.checkpoint_epochs: list[int] = self.identity["train"]["checkpoint_epochs"]
        self.run_dir = Path(cfg.paths.runs) / self.run_id
        self.device = resolve_device(cfg.device)
        self.data_fingerprint = data_fingerprint(cfg.data)  # the data this run trains on: in run.json and every record
        self.run_record_written = False

    def checkpoint(self, epoch: int) -> Checkpoint:
        return Checkpoint(self.run_dir / epoch_dirname(epoch), self.run_id, epoch)

    def setup(self, fresh: bool = False) -> None:
        """Load the data, check sizes against it, build model and optimizer, resume unless ``fresh``; only
        then write ``run.json`` (status ``running``)."""
        self.data: FewShotData = load_data(self.cfg.data)
        validate_against_data(self.cfg, len(self.data.upstream_train), self.data.upstream_train.images.shape[-1])
        torch.manual_seed(self.cfg.seed)
        num_classes = self.data.upstream_train.num_classes
        self.model = create_model(num_classes=num_classes, **self.cfg.model).to(self.device)
        self.memory_format = conv_memory_format(self.cfg.train.channels_last, self.device)
        self.model = self.model.to(memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if self.cfg.train.compile else self.model
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[self.cfg.train.precision]
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train)
        self.order_rng = torch.Generator().manual_seed(self.cfg.seed)
        self.images = self.data.upstream_train.images.to(self.device)
        self.labels = self.data.upstream_train.labels.to(self.device)
        self.heldout_images = self.data.upstream_heldout.images.to(self.device)
        self.heldout_labels = self.data.upstream_heldout.labels.to(self.device)
        self.start_epoch = 1
        self.history: list[dict] = []
        self.resumed_after: list[int] = []  # epochs this run was resumed after (crash, preemption)
        self.elapsed = 0.0
        self.runtime = runtime_info(self.device)
        for removed in clean_stale_tmp(self.run_dir) if self.run_dir.exists() else []:
            print(f"{self.run_id}: removed a leftover temporary file {removed.name}")
        resume_file = self.run_dir / RESUME_FILE
        if fresh:
            resume_file.unlink(missing_ok=True)  # overwrite means overwrite: never resume
        elif resume_file.exists():
            self._resume()
        self._write_run_record("running", num_classes)

    def _write_run_record(self, status: str, num_classes: int, error: str | None = None) -> None:
        write_json(
            self.run_dir / RUN_FILE,
            {
                "run_id": self.run_id,
                "experiment": self.cfg.experiment_name,
                "status": status,
                "num_classes": num_classes,
                "config": self.identity,
                "seed": self.cfg.seed,
                "device": str(self.device),
                "runtime": self.runtime,
                "host": platform.node(),
                "wall_time_s": self.elapsed,
                "history": self.history,
                "resumed_after_epochs": self.resumed_after,
                DATA_FINGERPRINT: self.data_fingerprint.value,
                **({"error": error} if error else {}),
            },
        )
        self.run_record_written = True

    def mark_failed(self, error: BaseException) -> None:
        """Record that the run died (status ``failed`` with the error), so it is never left ``running``."""
        if self.run_record_written:
            reason = f"{type(error).__name__}: {error}".rstrip(": ")
            self._write_run_record("failed", self.data.upstream_train.num_classes, error=reason)

    def _resume(self) -> None:
        """Continue from ``resume.pt``; an unreadable one (or run.json) means a fresh start, said so."""
        try:
            state = load_torch(self.run_dir / RESUME_FILE, map_location=self.device)
            previous = read_json(self.run_dir / RUN_FILE)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.order_rng.set_state(state["order_rng"].cpu())
        except (RecordError, KeyError, RuntimeError, ValueError) as error:
            print(f"{self.run_id}: cannot resume ({error}); training from the start instead.")
            (self.run_dir / RESUME_FILE).unlink(missing_ok=True)
            self.setup(fresh=True)
            return
        self.start_epoch = int(state["epoch"]) + 1
        self.elapsed = float(state["elapsed"])
        self.history = previous.get("history", [])[: self.start_epoch - 1]
        self.resumed_after = previous.get("resumed_after_epochs", []) + [self.start_epoch - 1]
        print(f"{self.run_id}: resuming after epoch {self.start_epoch - 1}")
        warn_runtime_mismatch(
            f"{self.run_id}: resuming",
            [(str(self.run_dir / RUN_FILE), runtime_differences(previous.get("runtime"), self.runtime))],
        )

    def _save_resume_state(self, epoch: int) -> None:
        save_torch(
            self.run_dir / RESUME_FILE,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "order_rng": self.order_rng.get_state(),
                "epoch": torch.tensor(epoch),
                "elapsed": torch.tensor(self.elapsed),
            },
        )

    def _batch(self, index: torch.Tensor) -> torch.Tensor:
        images = self.data.normalize(self.images[index])
        augment = self.cfg.train.augment
        images = random_crop_flip(images, augment.padding, augment.flip, self.order_rng)
        return images.contiguous(memory_format=self.memory_format)

    def train_epoch(self, epoch: int) -> EpochStats:
        self.model.train()
        start = time.perf_counter()
        batch_size = self.cfg.train.batch_size
        order = torch.randperm(len(self.labels), generator=self.order_rng)
        num_batches = len(order) // batch_size  # drop the last partial batch, as batch norm prefers
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        lr = self.optimizer.param_groups[0]["lr"]
        steps = progress_bar(
            range(num_batches), progress=self.cfg.progress, desc=f"epoch {epoch}", unit="step", leave=False
        )
        for step in steps:
            index = order[step * batch_size : (step + 1) * batch_size].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits = self.forward(self._batch(index))
            target = self.labels[index]
            loss = F.cross_entropy(logits.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == target).sum()
        self.scheduler.step()
        seen = num_batches * batch_size
        return EpochStats(epoch, loss_sum.item() / num_batches, correct.item() / seen, lr, time.perf_counter() - start)

    def save_checkpoint(self, stats: EpochStats) -> dict:
        heldout = evaluate(
            self.model, self.heldout_images, self.heldout_labels, self.data.normalize, self.cfg.train.eval_batch_size
        )
        directory = self.run_dir / epoch_dirname(stats.epoch)
        save_torch(directory / MODEL_FILE, self.model.state_dict())
        record = {
            "run_id": self.run_id,
            "epoch": stats.epoch,
            "train_loss": stats.train_loss,
            "train_acc": stats.train_acc,
            "heldout_loss": heldout.loss,
            "heldout_acc": heldout.accuracy,
            "lr": stats.lr,
            "seed": self.cfg.seed,
            "wall_time_s": self.elapsed,
            "device": str(self.device),
            "num_classes": self.data.upstream_train.num_classes,
            "settings": self.identity,
            "runtime": self.runtime,
            DATA_FINGERPRINT: self.data_fingerprint.value,
            **model_fields(directory / MODEL_FILE),
        }
        write_json(directory / f"{PRETRAIN_RECORD}.json", record)
        return record

    def run(self, on_epoch_end: Callable[[int], None] | None = None) -> str:
        """Train to the last epoch (or resume to it); returns the final status."""
        checkpoint_epochs = set(self.checkpoint_epochs)
        num_classes = self.data.upstream_train.num_classes
        epochs = progress_bar(
            range(self.start_epoch, self.cfg.train.epochs + 1),
            progress=self.cfg.progress,
            desc=self.run_id,
            unit="epoch",
        )
        for epoch in epochs:
            stats = self.train_epoch(epoch)
            self.elapsed += stats.seconds
            if not math.isfinite(stats.train_loss):
                log.warning(
                    "%s: training loss is %s at epoch %d; the run diverged and stops here (lower optim.lr).",
                    self.run_id,
                    stats.train_loss,
                    epoch,
                )
                self._write_run_record("diverged", num_classes)
                return "diverged"
            summary = asdict(stats)
            if epoch in checkpoint_epochs:
                record = self.save_checkpoint(stats)
                summary.update(heldout_loss=record["heldout_loss"], heldout_acc=record["heldout_acc"])
            self.history.append(summary)
            self._save_resume_state(epoch)
            self._write_run_record("running", num_classes)
            tqdm.write(_epoch_line(self.run_id, summary))
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        self._write_run_record("done", num_classes)
        (self.run_dir / RESUME_FILE).unlink(missing_ok=True)
        return "done"


def _epoch_line(run_id: str, summary: dict) -> str:
    line = (
        f"{run_id} epoch {summary['epoch']:3d}  lr {summary['lr']:.4g}  "
        f"train loss {summary['train_loss']:.3f} acc {summary['train_acc']:.3f}"
    )
    if "heldout_acc" in summary:
        line += f"  held-out loss {summary['heldout_loss']:.3f} acc {summary['heldout_acc']:.3f}"
    return line + f"  ({summary['seconds']:.1f}s)"


def run_pretraining(cfg: DictConfig, on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Pretrain one configuration (or resume it, or skip it when finished and verified); returns the run folder.

    Before anything is written: the config is checked, a run that is not one of a committed study's is refused in
    its folder (``check_committed_study``), an existing folder of the same setting made under another id is
    adopted (``adopt_run_folder``), and a finished run is verified (``verify_run``): a run whose checkpoint or
    record is damaged is retrained, a damaged ``run.json`` rebuilt from verified checkpoints; a run trained on
    other data (its ``data_fingerprint``) is refused, naming both. ``train.overwrite=true`` retrains from
    scratch, ignoring ``resume.pt``. A run that dies of
    any exception is marked ``failed`` in ``run.json``, with the error.
    """
    set_threads(cfg.num_threads)
    run = Pretraining(cfg)
    check_committed_study(cfg.paths.runs, run.run_id)
    note = checkpoint_epochs_note(cfg)
    if note:
        print(f"{run.run_id}: {note}")
    adopt_run_folder(run.run_dir, run.identity)
    verdict = verify_run(run)
    fresh = bool(cfg.train.overwrite)
    if verdict.action == "other_data" and not fresh:
        raise ValueError(
            f"{run.run_id}: {verdict.reason}. Nothing was trained. Point data.root at the copy this run was trained "
            "on; for a study of this copy use another experiment_name=…; or retrain the run on it with "
            "train.overwrite=true."
        )
    if verdict.action == "skip" and not fresh:
        print(f"{run.run_id}: finished already, skipped ({len(run.checkpoint_epochs)} checkpoints verified)")
        return run.run_dir
    if verdict.action == "rebuild" and not fresh:
        rebuild_run_record(run, verdict)
        print(
            f"{run.run_id}: {verdict.reason}; its checkpoints verify, so run.json was rebuilt from them "
            "(no retraining)."
        )
        return run.run_dir
    if verdict.action == "retrain" and not fresh:
        print(
            f"{run.run_id}: {verdict.reason}; retraining the run from the start (same settings and seed: "
            "the same weights on the same machine and thread count)."
        )
        fresh = True
    try:
        run.setup(fresh=fresh)
        status = run.run(on_epoch_end)
    except BaseException as error:
        run.mark_failed(error)
        raise
    print(f"{run.run_id}: {status} ({run.elapsed:.0f}s of training)")
    return run.run_dir
