"""A fresh clone: `python scripts/figures.py experiment=default` redraws the committed tables and figures
identically from the committed records, or, without records, refuses and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("results/default", "figures/default")  # what figures.py writes for the default study


def git(*arguments: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *arguments], capture_output=True, text=True, check=True).stdout


def committed_records() -> list[str]:
    return [p for p in git("ls-files", "runs/default").splitlines() if p.endswith("/pretrain.json")]


def fresh_clone(destination: Path) -> Path:
    """The committed tree of HEAD (what `git clone` checks out), without the working tree's changes."""
    archive = destination.parent / "head.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), "HEAD"], check=True)
    destination.mkdir(parents=True)
    # the system's tar, not tarfile.extractall(filter=…), which needs Python >= 3.11.4 (Debian 12 has 3.11.2)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(destination)], check=True)
    return destination


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the default study's output folders, by path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in OUTPUTS
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def redraw(clone: Path) -> subprocess.CompletedProcess:
    """The README's redraw command in the clone, with the clone's own sources, from a new shell's environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("FREEENERGY_ROOT", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "scripts/figures.py", "experiment=default"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def clone(tmp_path) -> Path:
    if not git("ls-files", *OUTPUTS).strip():
        pytest.skip("no committed results/default or figures/default")
    return fresh_clone(tmp_path / "clone")


def test_redraw_on_a_fresh_clone_reproduces_the_committed_results_byte_for_byte(clone):
    assert committed_records(), (
        "runs/default/*/epoch_*/*.json must be committed with results/default and figures/default"
    )
    committed = snapshot(clone)
    result = redraw(clone)
    assert result.returncode == 0, result.stderr[-3000:]
    redrawn = snapshot(clone)
    assert sorted(redrawn) == sorted(committed), "figures.py wrote files that are not committed, or lost some"
    changed = [path for path in committed if redrawn[path] != committed[path]]
    assert not changed, f"redrawn files differ from the committed ones: {changed}"


def test_redraw_without_records_refuses_and_changes_nothing(clone):
    for record in (clone / "runs").rglob("*.json") if (clone / "runs").exists() else []:
        record.unlink()  # the state of a clone made before records were committed
    committed = snapshot(clone)
    result = redraw(clone)
    assert result.returncode != 0
    assert "No finished checkpoint record" in result.stderr and "./reproduce.sh default" in result.stderr
    assert snapshot(clone) == committed
