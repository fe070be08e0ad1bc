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


def test_rule_targets_the_flattest_curvature_and_spends_the_budget_on_steps():
    """Issue 25 item 1: γ/nβ = α × the flattest λ_max (an LLC, not a trace), ε from the sharpest, and a burn-in of k
    relaxation times 1/(εγ); a short budget raises γ only as far as its relaxation needs, and says what the
    target would take."""
    rule = AutoRule(
        stability_fraction=0.1,
        gradient_noise=0.1,
        relaxation_times=3.0,
        resolved_curvature=0.1,
        max_relative_distance=None,
        min_burnin=10,
    )
    nbeta, batch = 100.0, 200  # c = min(0.1, 0.1·200/100) = 0.1
    choice = choose_sgld_settings(400.0, nbeta, batch, rule, flattest=40.0)
    assert choice.localization == pytest.approx(0.1 * nbeta * 40.0) and choice.reason == "target"
    assert choice.gamma_over_nbeta == pytest.approx(4.0)
    assert choice.max_stable_step == pytest.approx(4 / (nbeta * 400 + 400))
    assert choice.step_size == pytest.approx(0.1 * choice.max_stable_step)
    # burn-in: k/(εγ) = 3·(40000 + 400)/(0.4·400) = 757.5 → 758; draws = burn-in
    assert choice.num_burnin == 758 and choice.num_draws == 758 and choice.burnin_relaxation_times >= 3
    assert choice.resolved(40.0) == pytest.approx(1 / 1.1)  # the flattest's sharpest direction: 91%
    # the minibatch-noise cap: c = 0.1·b/nβ when that is smaller (b = 50 → 0.05)
    noisy = choose_sgld_settings(400.0, nbeta, 50, rule, flattest=40.0)
    assert noisy.step_size / noisy.max_stable_step == pytest.approx(0.05)
    # a budget of 200 burn-in steps: γ = nβ·λ_max/(4c·200/k − 1) = 40000/(80/3 − 1)
    short = choose_sgld_settings(400.0, nbeta, batch, rule, flattest=40.0, max_burnin=200)
    assert short.reason == "budget" and short.localization == pytest.approx(40000 / (80 / 3 - 1))
    assert short.num_burnin == 200 and short.burnin_relaxation_times == pytest.approx(3.0)
    assert short.target_burnin == 758 and "raised by the time budget" in short.describe()
    # a budget beyond the target's needs is not spent
    assert choose_sgld_settings(400.0, nbeta, batch, rule, flattest=40.0, max_burnin=10_000).num_burnin == 758
    with pytest.raises(ValueError, match="too few for any γ"):
        choose_sgld_settings(400.0, nbeta, batch, rule, flattest=40.0, max_burnin=7)


def test_rule_keeps_the_chains_local_and_takes_a_given_localization():
    rule = AutoRule(max_relative_distance=0.5)
    # locality: d coordinates at 1/√γ each stay within ρ·‖w*‖ → γ ≥ d/(ρ²‖w*‖²) = 10⁴/25 when larger than the target
    local = choose_sgld_settings(50.0, 100.0, 64, rule, flattest=1.0, num_parameters=10_000, weight_norm_sq=100.0)
    assert local.localization == pytest.approx(400.0) and local.reason == "locality"
    assert local.num_burnin == rule.burnin(50.0, 100.0, 64, 400.0)
    given = choose_sgld_settings(50.0, 100.0, 64, rule, localization=7.0)
    assert given.reason == "given" and given.localization == 7.0
    assert given.step_size == pytest.approx(rule.fraction(100.0, 64) * 4 / (5000 + 7))
    with pytest.raises(ValueError, match="λ_max = -1 <= 0"):
        choose_sgld_settings(-1.0, 100.0, 64, rule)
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
        measured,
        nbeta,
        50,
        AutoRule(),
        max_burnin=100,
        num_parameters=3,
        weight_norm_sq=float(model.weight.detach().pow(2).sum()),
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
        AutoRule().fraction(nbeta, 50) * 4 / (nbeta * measured + 7.0), rel=1e-9
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


def test_the_drift_bias_of_a_run_is_what_the_mean_dynamics_give():
    """Issue 25 item 2: the non-minimum's bias in this run's steps, not only at equilibrium (−nβ²‖g‖²/γ)."""
    from freeenergy.free_energy.diagnostics import gradient_bias

    nbeta, g2, eps, gamma, burnin, draws = 50.0, 0.3, 1e-3, 20.0, 100, 300
    # the chains' mean in a flat direction: δ ← δ − (ε/2)(nβ·g + γ·δ); the loss moves by g·δ, λ̂ by nβ·g·δ
    delta, shifts = 0.0, []
    for step in range(burnin + draws):
        if step >= burnin:
            shifts.append(nbeta * delta)  # per unit g: λ̂ shift = nβ·g·δ with δ ∝ g
        delta -= eps / 2 * (nbeta + gamma * delta)
    expected = g2 * sum(shifts) / len(shifts)
    assert gradient_bias(g2, nbeta, gamma, eps, burnin, draws) == pytest.approx(expected, rel=1e-9)
    assert gradient_bias(g2, nbeta, gamma) == pytest.approx(-(nbeta**2) * g2 / gamma)  # equilibrium
    assert gradient_bias(g2, nbeta, gamma, eps, 10**6, 10) == pytest.approx(-(nbeta**2) * g2 / gamma)
    # γ = 0: the drift grows without bound, −nβ²‖g‖²·(ε/2)·t averaged over the draws
    assert gradient_bias(g2, nbeta, 0.0, eps, burnin, draws) == pytest.approx(
        -(nbeta**2) * g2 * eps / 2 * (burnin + (draws - 1) / 2)
    )
    assert gradient_bias(0.0, nbeta, 0.0, eps, burnin, draws) == 0.0


def test_the_time_plan_covers_every_phase_and_inverts_the_budget():
    """Issue 29 item 5: the expected wall time left out the sharpness and the step-size check."""
    from freeenergy.rank.budget import Plan, Timing

    timing = Timing(step_s=0.05, hvp_s=0.5, overhead_s=2.0, probe_s=4.0)
    plan = Plan(timing, sharpness_pending=3, estimates_pending=3, step_check=True, chains=4, sharpness_products=11)
    # 240 s − 4 s spent − 3·(11·0.5 + 2) s of sharpness − (3 + 2)·2 s of overheads = 203.5 s for
    # (3 estimates + 2 for the check) × 4 chains × (B + B draws) × 0.05 s → B = 203.5 / 2 = 101
    burnin = plan.max_burnin(240.0, 4.0, draws_per_burnin=1.0)
    assert burnin == 101
    full = Plan(timing, 3, 3, True, 4, 11, burnin=burnin, draws=burnin)
    assert full.total_s == pytest.approx(4 + 22.5 + 3 * (4 * 202 * 0.05 + 2) + 2 * (4 * 202 * 0.05 + 2))
    assert full.total_s <= 240.0
    line = full.line(240.0)
    for phase in ("probe 4 s", "sharpness 22 s (3 × 11", "estimates", "3 × 4 chains × 202 steps", "step-size check"):
        assert phase in line, line
    assert Plan(timing, 0, 0, False, 4, 11).max_burnin(240.0, 0.0, 1.0) == 2**31  # nothing left to time


def test_the_drift_estimate_follows_the_mean_dynamics_along_the_gradient():
    """The drift_bias column: the mean's path along ĝ with curvature h, δ ← δ − (ε/2)(nβ(g + hδ) + γδ)."""
    from freeenergy.free_energy.diagnostics import drift_estimate, gradient_bias

    nbeta, g2, eps, gamma, burnin, draws = 50.0, 0.3, 1e-3, 20.0, 100, 300
    for h in (0.0, 0.5, 4.0):
        delta, shifts = 0.0, []
        for step in range(burnin + draws):
            if step >= burnin:
                shifts.append(nbeta * (math.sqrt(g2) * delta + 0.5 * h * delta**2))
            delta -= eps / 2 * (nbeta * (math.sqrt(g2) + h * delta) + gamma * delta)
        assert drift_estimate(g2, h, nbeta, gamma, eps, burnin, draws) == pytest.approx(np.mean(shifts), rel=1e-9)
        assert drift_estimate(g2, h, nbeta, gamma, eps, burnin, draws) >= gradient_bias(
            g2, nbeta, gamma, eps, burnin, draws
        )
    # relaxed, sharp: −nβ‖g‖²/(2h)·(nβh + 2γ)·nβh/(nβh + γ)² → −nβ‖g‖²/(2h) for nβh ≫ γ
    assert drift_estimate(g2, 1e4, nbeta, 0.0, 1e-6, 10**5, 10) == pytest.approx(-nbeta * g2 / (2 * 1e4), rel=1e-6)
    assert drift_estimate(0.0, 1.0, nbeta, gamma, eps, burnin, draws) == 0.0
