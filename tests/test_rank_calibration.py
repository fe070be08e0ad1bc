"""The automatic SGLD choice, the safe estimator API, the ImageFolder cache, deterministic calibration figures."""

from __future__ import annotations

import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from freeenergy.data import image_folder
from freeenergy.data.image_folder import load_image_folder
from freeenergy.free_energy import estimate_free_energy
from freeenergy.free_energy.auto import AutoRule, choose_sgld_settings
from freeenergy.free_energy.calibrate_step import calibration_title, plot_traces
from freeenergy.free_energy.calibration import calibrate
from freeenergy.records.io import save_figure

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def half_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((output.reshape(-1) - target) ** 2).mean()


def regression(n: int = 200, d: int = 3):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, d, generator=generator)
    targets = inputs @ torch.randn(d, generator=generator) + torch.randn(n, generator=generator)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets[:, None]).solution.T)
    return model, inputs, targets


# --- the rule -------------------------------------------------------------------------------------------


def test_rule_takes_a_fraction_of_the_bound_and_fits_k_relaxation_times_in_the_burn_in():
    rule = AutoRule(stability_fraction=0.25, relaxation_times=3.0, max_relative_distance=None, min_localization=1.0)
    choice = choose_sgld_settings(sharpness=50.0, nbeta=100.0, num_burnin=300, rule=rule)
    # γ = nβ·λ_max / (4c·B/k − 1) = 5000 / 99; ε = c·4/(nβ·λ_max + γ); then exactly k relaxation times in B
    assert choice.localization == pytest.approx(5000 / 99) and choice.localization_reason == "relaxation"
    assert choice.max_stable_step == pytest.approx(4 / (5000 + 5000 / 99))
    assert choice.step_size == pytest.approx(0.25 * choice.max_stable_step)
    assert choice.relaxation_steps == pytest.approx(1 / (choice.step_size * choice.localization))
    assert choice.burnin_relaxation_times == pytest.approx(3.0)
    # a flat checkpoint: γ falls to the configured minimum, ε to c·4/γ
    flat = choose_sgld_settings(sharpness=1e-9, nbeta=100.0, num_burnin=300, rule=rule)
    assert flat.localization == 1.0 and flat.localization_reason == "minimum" and flat.step_size == pytest.approx(1.0)
    # locality: d coordinates at 1/√γ each stay within ρ·‖w*‖ → γ = d / (ρ²‖w*‖²) when that is larger
    local = choose_sgld_settings(
        50.0,
        100.0,
        300,
        AutoRule(stability_fraction=0.25, max_relative_distance=0.5),
        num_parameters=10_000,
        weight_norm_sq=100.0,
    )
    assert local.localization == pytest.approx(10_000 / (0.25 * 100)) and local.localization_reason == "locality"
    assert "λ_max = 50" in local.describe() and "stability bound" in local.describe()


def test_rule_refuses_a_burn_in_too_short_and_warns_for_a_given_short_localization():
    with pytest.raises(ValueError, match="num_burnin=3 is too short.*num_burnin >= 4"):
        choose_sgld_settings(50.0, 100.0, num_burnin=3, rule=AutoRule(stability_fraction=0.25))
    # the default c = 0.03: the burn-in must exceed k/(4c) = 25 steps
    with pytest.raises(ValueError, match="num_burnin=25 is too short.*num_burnin >= 26"):
        choose_sgld_settings(50.0, 100.0, num_burnin=25)
    with pytest.warns(RuntimeWarning, match="fewer than 3 relaxation times"):
        choice = choose_sgld_settings(50.0, 100.0, num_burnin=10, localization=1.0)
    assert choice.localization_reason == "given" and choice.step_size == pytest.approx(
        AutoRule().stability_fraction * 4 / 5001
    )
    with pytest.raises(ValueError, match="stability_fraction=1.5"):
        AutoRule(stability_fraction=1.5)
    with pytest.raises(ValueError, match="unknown key"):
        AutoRule.from_config({"stability_fractoin": 0.2})


def test_rule_constants_in_code_are_the_configured_ones():
    configured = OmegaConf.load(ROOT / "conf" / "free_energy" / "default.yaml").auto
    assert AutoRule.from_config(configured) == AutoRule()
    calibrate_cfg = OmegaConf.load(ROOT / "conf" / "calibrate" / "default.yaml")
    import inspect

    from freeenergy.free_energy.auto import auto_sgld_settings

    defaults = inspect.signature(auto_sgld_settings).parameters
    assert defaults["sharpness_batch"].default == calibrate_cfg.sharpness_batch
    assert defaults["sharpness_iterations"].default == calibrate_cfg.sharpness_iterations


# --- the estimator API ------------------------------------------------------------------------------------


def test_estimate_requires_a_step_size_or_auto():
    model, inputs, targets = regression()
    with pytest.raises(ValueError, match="both are required"):
        estimate_free_energy(model, (inputs, targets), half_mse, num_draws=10)
    with pytest.raises(ValueError, match="both are required"):
        estimate_free_energy(model, (inputs, targets), half_mse, num_draws=10, step_size=1e-4)
    with pytest.raises(ValueError, match="step_size='fast'"):
        estimate_free_energy(model, (inputs, targets), half_mse, num_draws=10, step_size="fast")


def test_auto_step_size_applies_the_rule_to_the_measured_sharpness(capsys):
    model, inputs, targets = regression(n=200)  # the sharpness subset (256) is the whole data set
    n = len(targets)
    nbeta = n / math.log(n)
    exact = torch.linalg.eigvalsh(inputs.T @ inputs / n).max().item()  # Hessian of ½·MSE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 2 short chains may disagree; divergence is asserted below
        estimate = estimate_free_energy(
            model,
            (inputs, targets),
            half_mse,
            num_chains=2,
            num_draws=400,
            num_burnin=100,
            step_size="auto",
            batch_size=50,
        )
    measured = estimate.extra["auto"]["sharpness"]
    assert 0.95 * exact <= measured <= exact * (1 + 1e-6)  # power iteration approaches λ_max from below
    expected = choose_sgld_settings(
        measured, nbeta, 100, AutoRule(), None, 3, float(model.weight.detach().pow(2).sum())
    )
    assert estimate.settings.step_size == pytest.approx(expected.step_size, rel=1e-6)
    assert estimate.settings.localization == pytest.approx(expected.localization, rel=1e-6)
    assert "stability bound" in capsys.readouterr().out and not estimate.diverged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 20 draws: the chain-agreement check may complain
        given = estimate_free_energy(
            model,
            (inputs, targets),
            half_mse,
            num_chains=2,
            num_draws=20,
            num_burnin=50,
            step_size="auto",
            localization=7.0,
            batch_size=50,
        )
    assert given.settings.localization == 7.0
    assert given.settings.step_size == pytest.approx(
        AutoRule().stability_fraction * 4 / (nbeta * measured + 7.0), rel=1e-9
    )


# --- the ImageFolder cache --------------------------------------------------------------------------------


def test_image_folder_is_decoded_once_and_rebuilt_when_it_changes(tmp_path, monkeypatch):
    root = tmp_path / "images"
    for label, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 6), colour).save(root / f"c{label}" / f"{i}.png")
    decoded = []
    real_decode = image_folder.decode_file
    monkeypatch.setattr(
        image_folder, "decode_file", lambda path, size, crop: decoded.append(path) or real_decode(path, size, crop)
    )
    first = load_image_folder(root, 4, tmp_path / "cache", progress=False)
    assert first.images.shape == (6, 3, 4, 4) and first.images.dtype == torch.uint8 and len(decoded) == 6
    assert first.class_names == ["c0", "c1"] and first.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.images[0, :, 2, 2].tolist() == [255, 0, 0] and first.images[5, :, 2, 2].tolist() == [0, 0, 255]
    again = load_image_folder(root, 4, tmp_path / "cache", progress=False)
    assert len(decoded) == 6 and torch.equal(again.images, first.images)  # from the cache
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "c1" / "3.png")  # a file added
    grown = load_image_folder(root, 4, tmp_path / "cache", progress=False)
    assert len(decoded) == 6 + 7 and len(grown) == 7 and grown.images[6, :, 2, 2].tolist() == [0, 255, 0]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [next((tmp_path / "cache").iterdir()).name]  # no temp
    with pytest.raises(FileNotFoundError, match="rank.data="):
        load_image_folder(tmp_path / "nowhere", 4, tmp_path / "cache")


# --- the calibration figure -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 16 draws: the health checks complain, as they should
def test_calibration_figure_names_checkpoint_sharpness_and_bound_and_is_byte_stable(tmp_path):
    model, inputs, targets = regression(n=300)
    sharpness = torch.linalg.eigvalsh(inputs.T @ inputs / 300).max().item()

    def estimate(step_size, localization):
        return estimate_free_energy(
            model,
            (inputs, targets),
            half_mse,
            num_chains=2,
            num_draws=16,
            num_burnin=4,
            step_size=step_size,
            localization=localization,
            batch_size=50,
        )

    table, estimates = calibrate(estimate, [1e-3], [1.0, 10.0], progress=False, sharpness=sharpness)
    title = calibration_title("runs/x/epoch_008", sharpness, table, estimates)
    nbeta = 300 / math.log(300)
    assert "runs/x/epoch_008" in title and f"λ_max = {sharpness:.4g}" in title
    assert f"{4 / (nbeta * sharpness + 10.0):.2g} (γ = 10)" in title
    first = plot_traces(estimates, table, tmp_path / "a.png", "runs/x/epoch_008", sharpness).read_bytes()
    second = plot_traces(estimates, table, tmp_path / "b.png", "runs/x/epoch_008", sharpness).read_bytes()
    assert first == second
    import matplotlib.pyplot as plt

    figure = plt.figure()
    pdf = save_figure(figure, tmp_path / "c.pdf", dpi=50).read_bytes()
    plt.close(figure)
    assert b"CreationDate" not in pdf and not list(tmp_path.glob(".*tmp*"))


# --- packaging --------------------------------------------------------------------------------------------


def test_pyproject_declares_ranges_for_every_runtime_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower(): dep
        for dep in project["dependencies"]
    }
    assert not any("==" in dep for dep in project["dependencies"])  # exact pins stay in requirements.txt
    pinned = [
        line.split("==")[0].strip().lower()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    optional = {
        dep.split(">")[0].split("=")[0].strip().lower()
        for extra in project.get("optional-dependencies", {}).values()
        for dep in extra
    }
    missing = [name for name in pinned if name not in declared and name not in optional]
    assert not missing, f"requirements.txt pins {missing}, which pyproject.toml does not declare"
    assert np.all([">=" in dep for dep in project["dependencies"]])
