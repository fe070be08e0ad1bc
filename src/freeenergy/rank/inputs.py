"""The rank command's inputs, checked before torch and timm are imported: the checkpoint files and the data folder.

Torch-free on purpose: ``scripts/rank.py`` runs ``precheck`` first, so a wrong path, an empty or one-class
data folder or a glob that matches no checkpoint costs a second, not the minute of imports of a busy
machine. Each refusal is a ``ValueError`` / ``FileNotFoundError`` naming the key, the value and the fix
(``cli.user_errors`` prints it as one line).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from freeenergy.rank.config import validate_rank_keys

SHOWN_NAMES = 6  # skipped file names listed in the one-line note


@dataclass(frozen=True)
class CheckpointFiles:
    """The files ``rank.checkpoints`` names, and those its globs matched but whose suffix is not a checkpoint's."""

    files: list[Path]
    skipped: list[Path] = field(default_factory=list)

    def skipped_line(self) -> str | None:
        """One line naming the skipped files (None when none were)."""
        if not self.skipped:
            return None
        names = ", ".join(path.name for path in self.skipped[:SHOWN_NAMES])
        more = f", … ({len(self.skipped)} in all)" if len(self.skipped) > SHOWN_NAMES else ""
        return (
            f"rank.checkpoints: skipped {len(self.skipped)} file(s) whose suffix is not a checkpoint's: {names}{more} "
            "(name a file explicitly, or add its suffix to rank.checkpoint_suffixes, to rank it)"
        )


def expand_checkpoints(entries: Sequence[str] | str, suffixes: Sequence[str]) -> CheckpointFiles:
    """Files named by ``rank.checkpoints`` (files or globs; ``**`` recurses), in order, without duplicates.

    A glob keeps only files ending in one of ``suffixes`` (e.g. ``.pt``, ``.safetensors``), so metadata beside
    the checkpoints (``.json``, ``.yaml``, logs) is skipped and listed; a file named without a wildcard is
    always kept. Raises ``ValueError`` naming an entry that matches no (checkpoint) file, before any work.
    """
    if isinstance(entries, str):
        entries = [entries]
    wanted = tuple(s.lower() for s in suffixes)
    files: list[Path] = []
    skipped: list[Path] = []
    for entry in entries:
        pattern = os.path.expanduser(str(entry))
        is_glob = glob.has_magic(pattern)
        matches = [Path(m) for m in (sorted(glob.glob(pattern, recursive=True)) if is_glob else [pattern])]
        matches = [m for m in matches if m.is_file()]
        kept = [m for m in matches if not is_glob or m.name.lower().endswith(wanted)]
        if not kept:
            found = f" (it matches only {', '.join(m.name for m in matches[:SHOWN_NAMES])})" if matches else ""
            raise ValueError(
                f"rank.checkpoints entry {str(entry)!r} matches no checkpoint file{found}; give checkpoint files or "
                f"globs, e.g. 'rank.checkpoints=[ckpts/*.pt,best.safetensors]' (a glob keeps the suffixes "
                f"rank.checkpoint_suffixes={list(suffixes)})."
            )
        files.extend(m for m in kept if m not in files)
        skipped.extend(m for m in matches if m not in kept and m not in skipped)
    return CheckpointFiles(files, skipped)


def project_datasets(conf_dir: str | Path | None) -> set[str]:
    """This project's dataset names: the ``conf/data/<name>.yaml`` files (torch-free), or, without ``conf_dir``,
    ``freeenergy.data.DATASETS`` (which imports torch)."""
    if conf_dir is not None:
        return {path.stem for path in (Path(conf_dir) / "data").glob("*.yaml")}
    from freeenergy.data import DATASETS

    return set(DATASETS)


def check_data_folder(data: str, conf_dir: str | Path | None) -> None:
    """Refuse a ``rank.data`` that cannot be an ImageFolder of a classifier's training data, from the listing only.

    Raises ``FileNotFoundError`` when it is no folder, and ``ValueError`` when it holds fewer than two class
    folders (an empty folder, images directly under it, or one class), each naming the fix.
    """
    root = Path(data).expanduser()
    if data in project_datasets(conf_dir) and not root.is_dir():
        return
    if not root.is_dir():
        raise FileNotFoundError(
            f"rank.data={data!r} is not a folder (nor one of this project's datasets); give the ImageFolder root "
            "<root>/<class>/<image> of the images the checkpoints were trained on."
        )
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if len(classes) < 2:
        held = f"one class folder ({classes[0]!r})" if classes else "no class folder"
        raise ValueError(
            f"rank.data={data!r} holds {held}: a classifier's free energy needs the training images in at least two "
            "class folders, <root>/<class>/<image>. Point rank.data at the folder that holds the class folders."
        )


def precheck(cfg: DictConfig, conf_dir: str | Path | None = None) -> CheckpointFiles:
    """Every check that needs no torch: the ``rank.*`` keys, the checkpoint files, the data folder."""
    validate_rank_keys(cfg)
    files = expand_checkpoints(list(cfg.rank.checkpoints), list(cfg.rank.checkpoint_suffixes))
    check_data_folder(str(cfg.rank.data), conf_dir)
    return files
