"""The rank command end to end, on a tiny ImageFolder and checkpoints of timm's test_resnet.

Three loadable checkpoints in three wrappings (plain state dict, ``module.``-prefixed inside
``state_dict``, safetensors), one corrupt file and one of another architecture. SGLD is tiny (2 chains,
16 steps at 8×8 pixels): these tests check the pipeline (loading, ranking, records, resuming, refusals),
not the quality of the estimates; the trained checkpoint ranks first because its n·L_n(w*) is a third
of the untrained ones', far beyond any spread.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image
from readonly import read_only
from safetensors.torch import save_file

from freeenergy.free_energy.diagnostics import FLAGS
from freeenergy.rank import run_rank
from freeenergy.rank.command import run_rank_calibration
from freeenergy.rank.report import COLUMNS, distinguishable
from freeenergy.records.io import read_json

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
# tiny SGLD: its health warnings (chains disagree, …) are expected here and land in the status column
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def rank_config(overrides: list[str]) -> DictConfig:
    """The rank command's Hydra config, composed as scripts/rank.py sees it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="rank/default", overrides=overrides)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = torch.randint(-50, 50, (8, 8, 3), generator=generator)
            pixels = (torch.tensor(COLOURS[label]).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i:02d}.png")
    return root


def trained_state(images: torch.Tensor, labels: torch.Tensor, steps: int = 30) -> dict:
    torch.manual_seed(2)
    model = timm.create_model("test_resnet", num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = images.float() / 255.0
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.state_dict()


def random_state(seed: int, num_classes: int = 3) -> dict:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """images/ (3 classes × 12 PNGs, 8×8) and ckpts/ with five files (three load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster (the one_thread fixture starts later)
    root = tmp_path_factory.mktemp("rank")
    write_image_folder(root / "images")
    from freeenergy.data.image_folder import load_image_folder

    data = load_image_folder(root / "images", 8, root / "scratch_cache", progress=False)
    ckpts = root / "ckpts"
    ckpts.mkdir()
    torch.save(trained_state(data.images, data.labels), ckpts / "trained.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in random_state(0).items()}, "epoch": 3}, ckpts / "init0.pth")
    save_file({k: v.contiguous() for k, v in random_state(1).items()}, str(ckpts / "init1.safetensors"))
    (ckpts / "broken.pt").write_bytes(b"this is not a checkpoint")
    torch.save(torch.nn.Linear(4, 3).state_dict(), ckpts / "linear.pt")
    torch.set_num_threads(threads)
    return root


def tiny_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "rank.model=test_resnet",
        f"rank.checkpoints=[{root / 'ckpts'}/*]",
        f"rank.data={root / 'images'}",
        "rank.image_size=8",
        "rank.name=tiny",
        f"rank.results={out / 'results'}",
        f"rank.figures={out / 'figures'}",
        f"rank.cache_dir={out / 'cache'}",
        "rank.probe_steps=2",
        "free_energy.num_chains=2",
        "free_energy.num_burnin=30",
        "free_energy.num_draws=8",
        "free_energy.batch_size=12",
        "free_energy.eval_batch_size=64",
        "calibrate.sharpness_batch=24",
        "calibrate.sharpness_iterations=3",
        "progress=false",
        "device=cpu",
        *extra,
    ]


def record_times(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "results" / "records").glob("*.json")}


def test_rank_end_to_end_ranks_the_loadable_names_the_broken_and_resumes(project, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = rank_config(tiny_overrides(project, out))
    result = run_rank(cfg)
    printed = capsys.readouterr().out

    table = result.table
    assert list(table.columns) == COLUMNS + ["rankme", "alpha_req"]  # rank.selectors=auto, no downstream data
    ranked = table[table["rank"].notna()]
    names = lambda suffixes: {str(project / "ckpts" / s) for s in suffixes}
    assert set(ranked["checkpoint"]) == names(["trained.pt", "init0.pth", "init1.safetensors"])
    assert list(ranked["rank"]) == [1, 2, 3] and ranked["free_energy"].is_monotonic_increasing
    assert ranked["checkpoint"].iloc[0].endswith("trained.pt")  # n·L_n(w*) ≪ that of the random inits
    assert (ranked["loss_term"] + ranked["complexity_term"] - ranked["free_energy"]).abs().max() < 1e-6
    assert all(status == "ok" or set(status.split(", ")) <= set(FLAGS) for status in ranked["status"])
    # one clear line per file that does not load, naming it and what is wrong; the others are still ranked
    unranked = table[table["rank"].isna()].set_index("checkpoint")["status"]
    broken, linear = str(project / "ckpts" / "broken.pt"), str(project / "ckpts" / "linear.pt")
    assert set(unranked.index) == {broken, linear}
    assert "cannot be read" in unranked[broken] and f"NOT RANKED: {broken}: cannot be read" in printed
    assert "missing keys: conv1.0.weight" in unranked[linear] and "unexpected keys: weight, bias" in unranked[linear]
    assert "expected wall time" in printed and "SGLD setting for every checkpoint" in printed
    assert result.choice.step_size < result.choice.max_stable_step
    # every phase the command runs is in the expected wall time (issue 29, item 5)
    expected = next(line for line in printed.splitlines() if line.startswith("expected wall time"))
    assert all(phase in expected for phase in ("probe", "sharpness", "estimates", "step-size check"))
    assert ranked["gamma_over_nbeta"].tolist() == pytest.approx([result.choice.gamma_over_nbeta] * 3)
    assert ranked["complexity_share"].tolist() == pytest.approx(
        (ranked["complexity_term"] / ranked["free_energy"]).tolist()
    )
    csv = pd.read_csv(result.csv_path)
    assert list(csv.columns) == COLUMNS + ["rankme", "alpha_req"] and len(csv) == 5
    assert "| rank | checkpoint |" in result.markdown_path.read_text()
    assert result.figure_path.stat().st_size > 10_000
    assert sorted(result.estimated) == sorted(ranked["checkpoint"]) and result.reused == []
    # the step-size check: one ranked checkpoint again at ε/2, with burn-in and draws doubled, in its record
    check = result.step_check
    assert check.checkpoint in set(ranked["checkpoint"]) and check.step_size == result.choice.step_size
    assert math.isfinite(check.half_llc) and check.result in ("on the plateau", "step-size biased", "cannot tell")
    assert check.relative_change == pytest.approx((check.llc - check.half_llc) / abs(check.half_llc))
    assert "step-size check on" in printed and "step-size check on" in result.markdown_path.read_text()
    checked = [read_json(p) for p in (out / "results" / "records").glob("*.json")]
    assert sum("step_check" in record for record in checked) == 1

    # a rerun recomputes nothing (the check included): same table, records untouched; it needs no write access
    before = record_times(out)
    with read_only(out / "results", out / "figures"):
        again = run_rank(cfg)
    assert again.estimated == [] and sorted(again.reused) == sorted(ranked["checkpoint"])
    assert record_times(out) == before and "at ε/2 =" not in capsys.readouterr().out
    assert again.step_check == check
    pd.testing.assert_frame_equal(again.table, table)

    # a run killed before one candidate's estimate resumes with that one only
    record_file = next(p for p in (out / "results" / "records").glob("*init0*.json"))
    record = read_json(record_file)
    record.pop("estimate")
    from freeenergy.records.io import write_json

    write_json(record_file, record)
    resumed = run_rank(cfg)
    assert resumed.estimated == [str(project / "ckpts" / "init0.pth")] and len(resumed.reused) == 2
    assert resumed.table["free_energy"].tolist()[:3] == pytest.approx(table["free_energy"].tolist()[:3])


def test_rank_refuses_mixed_class_counts_before_any_work(project, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    torch.save(random_state(0, num_classes=3), mixed / "three.pt")
    torch.save(random_state(0, num_classes=5), mixed / "five.pt")
    overrides = tiny_overrides(project, tmp_path / "out") + [f"rank.checkpoints=[{mixed}/*.pt]"]
    with pytest.raises(ValueError, match=r"different class counts \(3 classes: .*three.pt; 5 classes: .*five.pt\)"):
        run_rank(rank_config(overrides))
    assert not (tmp_path / "out").exists()


def test_rank_refuses_bad_input_naming_the_key(project, tmp_path):
    base = tiny_overrides(project, tmp_path / "out")
    cases = {
        "rank.checkpoints=[nowhere/*.pt]": "matches no checkpoint file",
        "rank.model=not_a_model_at_all": "neither a timm architecture",
        "free_energy.localization=auto free_energy.step_size=1e-4": "free_energy.localization='auto'",
        "free_energy.num_chains=1": "free_energy.num_chains=1",
        "rank.normalization=sideways": "rank.normalization='sideways'",
        "rank.checkpoints=ckpts/*.pt": "in brackets",
    }
    for override, message in cases.items():
        with pytest.raises(ValueError, match=message):
            run_rank(rank_config(base + override.split()))
    # the data have other classes than the checkpoints' head: refused unless a fresh head is fitted
    two = write_image_folder(tmp_path / "two_classes", classes=2, per_class=6)
    with pytest.raises(ValueError, match="rank.fit_head=true"):
        run_rank(rank_config(base + [f"rank.data={two}"]))
    # a given step size above the sharpest checkpoint's stability bound is refused
    with pytest.raises(ValueError, match="above the stability bound"):
        run_rank(rank_config(base + ["free_energy.step_size=10.0", "free_energy.localization=1.0"]))
    assert not (tmp_path / "out" / "results" / "ranking.csv").exists()


def test_fit_head_ranks_on_data_with_other_classes(project, tmp_path):
    two = write_image_folder(tmp_path / "two_classes", classes=2, per_class=6)
    overrides = tiny_overrides(
        project,
        tmp_path / "out",
        "rank.fit_head=true",
        f"rank.data={two}",
        f"rank.checkpoints=[{project / 'ckpts' / 'trained.pt'}]",
        "free_energy.batch_size=6",
    )
    result = run_rank(rank_config(overrides))
    assert list(result.table["rank"]) == [1]
    record = read_json(next((tmp_path / "out" / "results" / "records").glob("*.json")))
    assert 0.5 <= record["estimate"]["head_fit_accuracy"] <= 1 and record["estimate"]["n"] == 12


def test_calibrate_script_accepts_checkpoint_files(project, tmp_path):
    overrides = tiny_overrides(
        project, tmp_path / "out", "calibrate.auto_fractions=[0.25,2.0]", "calibrate.auto_localization_factors=[1.0]"
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_rank_calibration(rank_config(overrides), CONF_DIR)
    assert result.checkpoint.name == result.sharpness_table.loc[0, "checkpoint"]
    assert list(result.table["status"])[1] in ("diverged", "unstable")  # twice the bound
    assert result.suggestion is not None and result.figure_path.exists() and result.table_path.exists()
    assert (tmp_path / "out" / "results" / "sgld_sharpness.csv").exists()


def test_distinguishable_uses_the_standard_errors_of_both_neighbours():
    table = pd.DataFrame(
        {
            "free_energy": [10.0, 12.0, 12.5, math.nan],
            "free_energy_std": [1.0, 1.0, 1.0, math.nan],
            "num_chains": [4, 4, 4, 4],
        }
    )
    # se = 1/√4 = 0.5 each → combined 0.707; z = 2 → threshold 1.41: gap 2 yes, gap 0.5 no, next is NaN → None
    assert distinguishable(table, z=2.0) == [True, False, None, None]
    assert distinguishable(table, z=3.0) == [False, False, None, None]  # threshold 2.12 > 2


def test_a_project_model_on_a_project_dataset(tmp_path):
    """The README's worked example in miniature: this project's resnet_narrow, its synthetic data (upstream split)."""
    torch.manual_seed(0)
    from freeenergy.models import create_model

    torch.save(create_model("resnet_narrow", num_classes=64, width=4).state_dict(), tmp_path / "model.pt")
    overrides = tiny_overrides(tmp_path, tmp_path / "out") + [
        "rank.model=resnet_narrow",
        "rank.model_kwargs={width: 4}",
        f"rank.checkpoints=[{tmp_path / 'model.pt'}]",
        "rank.data=synthetic",
        "data.image_size=8",
        "data.images_per_class=5",
        f"paths.data_cache={tmp_path / 'cache'}",
        "free_energy.batch_size=32",
    ]
    result = run_rank(rank_config(overrides), CONF_DIR)
    record = read_json(next((tmp_path / "out" / "results" / "records").glob("*.json")))
    assert list(result.table["rank"]) == [1] and record["estimate"]["n"] == 64 * 4  # 5 per class, 20% held out
    assert record["estimate"]["init_loss"] == pytest.approx(math.log(64), rel=0.2)  # an untrained 64-way head
    with pytest.raises(ValueError, match="add data=cifar_fs"):
        run_rank(rank_config(overrides + ["rank.data=cifar_fs"]), CONF_DIR)


def test_step_check_flags_a_llc_that_moves_with_the_step_size_and_reuses_its_record(monkeypatch):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from freeenergy.rank import sgld, step_check

    fe = OmegaConf.create(
        {
            "step_size": 1e-3,
            "localization": 100.0,
            "num_burnin": 50,
            "num_draws": 50,
            "num_chains": 4,
            "batch_size": 8,
            "seed": 0,
            "nbeta": 10.0,
            "sample_head": True,
        }
    )
    half = step_check.halved_step(fe)
    assert (half.step_size, half.num_burnin, half.num_draws, half.localization) == (5e-4, 100, 100, 100.0)
    saved = []
    state = SimpleNamespace(
        cfg=OmegaConf.create(
            {"calibrate": {"max_step_size_effect": 0.1}, "rank": {"distinguish_z": 2.0}, "progress": False}
        ),
        candidates=[SimpleNamespace(name="a")],
        save=saved.append,
        model_identity=lambda: {"model": "m"},
    )
    identity = sgld.estimate_identity(state, half)

    def verdict(main_llc, half_llc, std=0.2):
        state.records = {
            "a": {
                "estimate": {"llc": main_llc, "llc_std": std},
                "step_check": {"identity": identity, "llc": half_llc, "llc_std": std},
            }
        }
        return step_check.check_step_size(state, fe, "a")

    plateau = verdict(10.3, 10.0)  # +3% ± 1.4%: within 10% even at 2 standard errors
    assert plateau.result == "on the plateau" and plateau.biased is False
    with pytest.warns(RuntimeWarning, match="STEP-SIZE BIASED.*free_energy.step_size=0.0005.*num_burnin=100"):
        biased = verdict(14.0, 10.0)
    assert biased.biased is True and biased.relative_change == pytest.approx(0.4)
    noisy = verdict(14.0, 10.0, std=4.0)  # the same change within 2 s.e. of 4 chains' noise: neither verdict
    assert noisy.result == "cannot tell" and noisy.biased is None and "CANNOT TELL" in noisy.describe()
    assert verdict(None, 10.0).result is None  # a diverged estimate: no verdict
    assert saved == []  # every verdict above came from the finished record, nothing was re-estimated


def test_step_check_cannot_tell_when_noise_swamps_the_change_issue_29_repro():
    """Issue 29 item 6: one run said −63.8% 'biased', the rerun at ε/2 '+102.7%, on the plateau'. With the noise
    of both estimates in the verdict, neither is decided unless the interval is clear of the tolerance."""
    from freeenergy.rank.step_check import verdict

    tolerance = 0.1
    # λ̂ = 0.29 ± 0.15 at ε and 0.8 ± 0.3 at ε/2 (the kind of numbers of that run): −63.8%, but noise-sized
    assert verdict(0.29 - 0.8, math.hypot(0.15, 0.3), tolerance * 0.8, z=2.0) == "cannot tell"
    assert verdict(1.62 - 0.8, math.hypot(0.5, 0.3), tolerance * 0.8, z=2.0) == "cannot tell"
    # clear cases stay clear, on both sides of the tolerance
    assert verdict(0.02, 0.01, tolerance * 1.0, z=2.0) == "on the plateau"
    assert verdict(0.5, 0.05, tolerance * 1.0, z=2.0) == "step-size biased"
    assert verdict(float("nan"), 0.1, 0.1, z=2.0) is None


def test_the_ranking_at_half_the_step_size_is_extrapolated_from_the_checked_change():
    from freeenergy.rank.step_check import ranking_at_half

    table = pd.DataFrame(
        {
            "rank": [1, 2, 3],
            "checkpoint": ["a", "b", "c"],
            "free_energy": [100.0, 110.0, 200.0],
            "loss_term": [20.0, 60.0, 100.0],
            "complexity_term": [80.0, 50.0, 100.0],
            "drift_bias": [0.0, -20.0, 0.0],
            "distinguishable_from_next": pd.array([True, True, None], dtype="boolean"),
        }
    )
    assert ranking_at_half(table, 1.0) == []
    assert ranking_at_half(table, 0.9) == []  # a: 92, b: 40 + 0.9·70 = 103, c: 190
    assert ranking_at_half(table, 1.5) == []  # a: 140, b: 40 + 1.5·70 = 145: the drift of b is not scaled
    assert ranking_at_half(table, 2.5) == [("a", "b")]  # a: 220, b: 40 + 175 = 215: swapped
    table["distinguishable_from_next"] = pd.array([False, True, None], dtype="boolean")
    assert ranking_at_half(table, 2.5) == []  # a pair within its noise already: not a change of the ranking


def test_step_check_tests_a_checkpoint_where_the_llc_means_something():
    """Issue 29 item 6: not the least-trained checkpoint (λ̂ < 0, drifting), but the best-ranked healthy one."""
    from freeenergy.rank.step_check import check_target

    estimates = {
        "best_but_drifting": {"llc": 30.0, "flags": ["not levelled off"]},
        "second": {"llc": 12.0, "flags": ["not a minimum"]},  # a note, not an error: λ̂ > 0 and levelled off
        "third": {"llc": 20.0, "flags": []},
        "least_trained": {"llc": -40.0, "flags": ["not a minimum", "negative LLC"]},
        "diverged": {"llc": None, "flags": ["diverged"]},
    }
    order = ["best_but_drifting", "second", "third", "least_trained", "diverged", "not_loaded"]
    assert check_target(order, estimates, {}) == "second"
    assert check_target(order, estimates, {"second": True}) == "third"  # a distrusted one is not judged
    unhealthy = {name: estimates[name] for name in ("best_but_drifting", "least_trained", "diverged")}
    assert check_target(order, unhealthy, {}) == "best_but_drifting"  # no healthy one: the best with λ̂ > 0
    only_bad = {name: estimates[name] for name in ("least_trained", "diverged")}
    assert check_target(["least_trained", "diverged"], only_bad, {}) == "least_trained"  # then the best finite
    assert check_target(["diverged"], {"diverged": estimates["diverged"]}, {}) is None
