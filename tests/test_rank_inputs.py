"""The rank command's inputs and its verdicts: the checkpoint glob, one-line user errors before the heavy imports,
grayscale models, the thread count, and which estimates to distrust.

Each case is a repro of issue 25 (items 2 and 4) or issue 29 (item 3); the script cases run ``scripts/rank.py``
as a user would.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = [".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".tar"]


def write_images(root: Path, classes: int, per_class: int = 4, size: int = 8) -> Path:
    generator = torch.Generator().manual_seed(0)
    for label in range(classes):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 255, (size, size, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / f"class_{label}" / f"{i}.png")
    return root


# --- the glob --------------------------------------------------------------------------------------------


def test_a_glob_keeps_checkpoint_files_and_names_the_skipped_in_one_line(tmp_path):
    """Issue 25 item 4: `ckpts/*` took the .json sidecars as checkpoints (and printed torch's message for each)."""
    from freeenergy.rank.inputs import expand_checkpoints

    for name in ("a.pt", "a.json", "b.safetensors", "b.json", "c.PTH", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_checkpoints([str(tmp_path / "*")], SUFFIXES)
    assert [p.name for p in found.files] == ["a.pt", "b.safetensors", "c.PTH"]
    assert sorted(p.name for p in found.skipped) == ["a.json", "b.json", "notes.txt"]
    line = found.skipped_line()
    assert "\n" not in line and "skipped 3 file(s)" in line and "a.json" in line and "rank.checkpoint_suffixes" in line
    # a file named without a wildcard is the user's choice: kept whatever its suffix
    assert expand_checkpoints([str(tmp_path / "a.json")], SUFFIXES).files == [tmp_path / "a.json"]
    with pytest.raises(ValueError, match=r"matches no checkpoint file \(it matches only a.json, b.json\)"):
        expand_checkpoints([str(tmp_path / "*.json")], SUFFIXES)
    with pytest.raises(ValueError, match="matches no checkpoint file"):
        expand_checkpoints([str(tmp_path / "nowhere" / "*.pt")], SUFFIXES)


# --- user errors: one line, status 2, before torch --------------------------------------------------------


def run_script(*overrides: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    if env_extra:
        env.update(env_extra)
    return subprocess.run(
        [sys.executable, "scripts/rank.py", *overrides, "device=cpu", "num_threads=1", "progress=false"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_the_cheap_checks_import_no_torch(tmp_path):
    """Issue 25 item 4: paths, the data folder and the keys are checked before the minute of imports."""
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from freeenergy.rank.inputs import precheck\n"
        f"cfg = OmegaConf.load({str(REPO / 'conf' / 'rank' / 'default.yaml')!r})\n"
        f"cfg.rank.update(model='x', checkpoints=[{str(tmp_path / '*.pt')!r}], data={str(tmp_path)!r})\n"
        "try:\n"
        "    precheck(cfg)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n"
        "print('torch imported:', 'torch' in sys.modules, 'timm imported:', 'timm' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert "refused: rank.checkpoints entry" in result.stdout, result.stderr
    assert "torch imported: False timm imported: False" in result.stdout


def test_user_errors_are_one_line_with_status_2(tmp_path):
    """Issue 25 item 4: a wrong rank.model, another architecture's checkpoint, a one-class folder, a junk file and an
    empty folder each gave a clear message under a 20-line traceback; each is now one line, exit status 2."""
    images = write_images(tmp_path / "images", classes=2)
    one_class = write_images(tmp_path / "one", classes=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(torch.nn.Linear(3, 2).state_dict(), ckpts / "linear.pt")
    (ckpts / "junk.pt").write_bytes(b"not a checkpoint")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), ckpts / "model.pt")
    base = [f"rank.results={tmp_path / 'out'}", f"rank.figures={tmp_path / 'fig'}", f"rank.cache_dir={tmp_path / 'c'}"]
    good = ["rank.model=test_resnet", f"rank.checkpoints=[{ckpts / 'model.pt'}]", f"rank.data={images}"]
    cases = {
        "wrong model": (["rank.model=tset_resnet", *good[1:]], "rank.model='tset_resnet' is neither"),
        "other architecture": (
            [*good[:1], f"rank.checkpoints=[{ckpts / 'linear.pt'}]", good[2]],
            "none of the 1 checkpoint file(s) loads",
        ),
        "junk only": ([*good[:1], f"rank.checkpoints=[{ckpts / 'junk.pt'}]", good[2]], "none of the 1 checkpoint"),
        "one-class folder": ([*good[:2], f"rank.data={one_class}"], "holds one class folder ('class_0')"),
        "empty folder": ([*good[:2], f"rank.data={empty}"], "holds no class folder"),
        "no folder": ([*good[:2], f"rank.data={tmp_path / 'nowhere'}"], "is not a folder"),
    }
    for case, (overrides, message) in cases.items():
        result = run_script(*overrides, *base)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (case, result.stderr[-2000:])
        assert lines[0].startswith("error: ") and message in lines[0], (case, lines)
        assert "Traceback" not in result.stderr and len(lines) == 2, (case, lines)  # + the HYDRA_FULL_ERROR hint
    shown = run_script(*cases["empty folder"][0], *base, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert shown.returncode != 0 and "Traceback" in shown.stderr  # asked for: the traceback


# --- grayscale ---------------------------------------------------------------------------------------------


def test_luminance_is_what_pil_gives():
    from freeenergy.rank.data import check_channels, to_channels

    pixels = torch.randint(0, 256, (5, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    gray = to_channels(pixels, 1)
    assert gray.shape == (5, 1, 4, 4) and gray.dtype == torch.uint8
    for image, converted in zip(pixels, gray):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")
        assert (torch.from_numpy(__import__("numpy").asarray(pil)).int() - converted[0].int()).abs().max() <= 1
    assert to_channels(pixels, 3) is pixels
    with pytest.raises(ValueError, match="takes 4 input channels"):
        check_channels(4)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.usefixtures("one_thread")
def test_a_grayscale_model_ranks_with_a_one_value_normalization(tmp_path):
    """Issue 29 item 3: rank.model_kwargs={in_chans: 1} with a 1-value mean/std was refused, and with the default
    normalization it failed inside PyTorch with a channel mismatch."""
    from hydra import compose, initialize_config_dir

    from freeenergy.rank import run_rank

    images = write_images(tmp_path / "images", classes=2, per_class=6)
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=2, in_chans=1).state_dict(), tmp_path / "gray.pt")
    overrides = [
        "rank.model=test_resnet",
        "rank.model_kwargs={in_chans: 1}",
        f"rank.checkpoints=[{tmp_path / 'gray.pt'}]",
        f"rank.data={images}",
        "rank.image_size=8",
        f"rank.results={tmp_path / 'out'}",
        f"rank.figures={tmp_path / 'fig'}",
        f"rank.cache_dir={tmp_path / 'cache'}",
        "rank.probe_steps=2",
        "rank.step_check=false",
        "free_energy.num_chains=2",
        "free_energy.num_burnin=10",
        "free_energy.num_draws=8",
        "free_energy.batch_size=6",
        "calibrate.sharpness_batch=12",
        "calibrate.sharpness_iterations=2",
        "device=cpu",
        "progress=false",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        explicit = compose("rank/default", overrides=[*overrides, "rank.normalization={mean: [0.5], std: [0.25]}"])
        default = compose("rank/default", overrides=overrides)
        wrong = compose(
            "rank/default", overrides=[*overrides, "rank.normalization={mean: [0.5, 0.5, 0.5], std: [1, 1, 1]}"]
        )
        four = compose("rank/default", overrides=[*overrides, "rank.model_kwargs={in_chans: 4}"])
    assert list(run_rank(explicit).table["rank"]) == [1]
    assert list(run_rank(default).table["rank"]) == [1]  # the images' own 1-channel statistics
    with pytest.raises(ValueError, match=r"one value per input channel of the model \(1\)"):
        run_rank(wrong)
    with pytest.raises(ValueError, match="takes 4 input channels"):
        run_rank(four)


# --- threads -----------------------------------------------------------------------------------------------


def test_auto_threads_are_the_free_cores(monkeypatch):
    """Issue 25 item 3: a run without num_threads=1 on a shared machine oversubscribed the cores."""
    from freeenergy import runtime

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (5.4, 5.0, 5.0))
    try:
        assert runtime.free_cores() == 3 and runtime.set_threads("auto") == 3
        monkeypatch.setattr(runtime.os, "getloadavg", lambda: (12.0, 9.0, 9.0))
        assert runtime.set_threads("auto") == 1  # never fewer than one
        assert runtime.set_threads(2) == 2
        with pytest.raises(ValueError, match="num_threads='many'"):
            runtime.set_threads("many")
    finally:
        torch.set_num_threads(before)


# --- distrust ----------------------------------------------------------------------------------------------


def record(free_energy: float, std: float, flags: list[str], drift_llc: float = 0.0, bias: float = 0.0) -> dict:
    n, nbeta = 1000, 1000 / math.log(1000)
    return {
        "free_energy": free_energy,
        "free_energy_std": std,
        "init_loss": (free_energy - 50) / n,
        "llc": 50 / math.log(n),
        "llc_std": 1.0,
        "n": n,
        "nbeta": nbeta,
        "flags": flags,
        "drift_llc": drift_llc,
        "gradient_bias": 4 * bias,  # the bound: at least the estimate
        "drift": bias,
        "hyperparameters": {"num_chains": 4},
    }


def test_distrust_is_for_errors_that_could_reorder_neighbours_not_for_a_non_minimum():
    """Issue 25 item 2: every ordinary checkpoint came back 'not a minimum' and the table said to distrust all."""
    from freeenergy.rank.report import ranking_table

    estimates = {
        "a_not_minimum": record(100.0, 2.0, ["not a minimum"], bias=-3.0),  # a note: its bias is reported
        "b_drifting_into_c": record(130.0, 2.0, ["not levelled off"], drift_llc=3.0),  # 3 LLC = 20.7 nats ≥ gap 15
        "c_ok": record(145.0, 2.0, []),
        "d_disagree_far": record(400.0, 5.0, ["chains disagree"]),  # its error (5) is far below the gap
    }
    table = ranking_table(estimates, [], z=2.0, gamma_over_nbeta=0.5).set_index("checkpoint")
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert table.loc["a_not_minimum", "distrust"] == False  # noqa: E712 (pandas boolean)
    assert table.loc["a_not_minimum", "drift_bias"] == pytest.approx(-3.0 * math.log(1000))  # LLC units → nats
    assert table.loc["a_not_minimum", "drift_bound"] == pytest.approx(-12.0 * math.log(1000))
    assert table.loc["b_drifting_into_c", "distrust"] == True  # noqa: E712
    assert table.loc["c_ok", "distrust"] == False  # noqa: E712 (its neighbour's error is not its own)
    assert table.loc["d_disagree_far", "distrust"] == False  # noqa: E712
    assert (table["gamma_over_nbeta"] == 0.5).all() and isinstance(table, pd.DataFrame)
    assert table.loc["c_ok", "complexity_share"] == pytest.approx(50 / 145)
