"""The entry points as a new user meets them: --help, where they write from any directory, refusing to
replace results with emptier ones, ./reproduce.sh's usage and dry run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compose_config, tiny_overrides

from freeenergy.analysis.report import NoRecordsError, run_analysis

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("scripts/*.py"))
ARGPARSE_SCRIPTS = ("compare_results.py",)  # plain command-line tools that compose no Hydra config
HYDRA_SCRIPTS = [s for s in SCRIPTS if s.name not in ARGPARSE_SCRIPTS]


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A command with this interpreter's sources first and FREEENERGY_ROOT as given (unset by default)."""
    environment = {k: v for k, v in os.environ.items() if k != "FREEENERGY_ROOT"}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), environment.get("PYTHONPATH", "")])
    environment.update(env)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- --help


@pytest.mark.parametrize("script", HYDRA_SCRIPTS, ids=lambda p: p.name)
def test_every_script_help_says_what_it_does_then_shows_the_config(script, tmp_path):
    result = run([sys.executable, str(script), "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module_doc = script.read_text().split('"""')[1].strip()
    first_line = module_doc.splitlines()[0]
    assert result.stdout.startswith(f"scripts/{script.name}: {first_line}")
    assert "source .venv/bin/activate" in result.stdout  # the usage names the environment to use
    assert "== Config" in result.stdout and "free_energy:" in result.stdout
    assert not list(tmp_path.iterdir())  # --help writes nothing


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
def test_a_command_line_tool_s_help_says_what_it_does_and_names_the_environment(script, tmp_path):
    result = run([sys.executable, str(REPO / "scripts" / script), "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first_line = (REPO / "scripts" / script).read_text().split('"""')[1].strip().splitlines()[0]
    assert first_line in " ".join(result.stdout.split()) and ".venv" in result.stdout
    assert not list(tmp_path.iterdir())


def test_every_script_docstring_shows_how_to_run_it_with_the_project_environment():
    for script in SCRIPTS:
        doc = script.read_text().split('"""')[1]
        assert f"python scripts/{script.name}" in doc, script.name
        if script.name != "sweep_overrides.py":  # an internal helper of reproduce.sh
            assert ".venv" in doc, script.name


def test_reproduce_help_prints_the_usage_and_an_unknown_experiment_is_refused(tmp_path):
    help_text = run([str(REPO / "reproduce.sh"), "--help"], cwd=tmp_path)
    assert help_text.returncode == 0 and help_text.stdout.startswith("Usage:")
    for experiment in ("default", "smoke", "cifar_fs", "mini_imagenet", "--dry-run", "launch.local_jobs=1"):
        assert experiment in help_text.stdout
    unknown = run([str(REPO / "reproduce.sh"), "sideways"], cwd=tmp_path)
    assert unknown.returncode == 2 and "Unknown experiment 'sideways'" in unknown.stderr
    experiments = " ".join(sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
    assert f"Choose one of: {experiments}" in unknown.stderr


def test_reproduce_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    result = run(
        [str(REPO / "reproduce.sh"), "cifar_fs", "--dry-run"],
        cwd=tmp_path,
        FREEENERGY_PYTHON=sys.executable,
        FREEENERGY_ROOT=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "runs:         70 = 14 settings × 5 seeds" in result.stdout
    assert "checkpoints:  490" in result.stdout and "980 SGLD estimates" in result.stdout
    assert not list(tmp_path.iterdir())  # not even a Hydra output folder


# ---------------------------------------------------------------- paths anchored at the repository


@pytest.fixture
def repository_copy(tmp_path) -> Path:
    """The scripts and configs in a fresh folder (the package comes from PYTHONPATH): a second repository."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", copy / "scripts")
    shutil.copytree(REPO / "conf", copy / "conf")
    return copy


def resolved_config(script: Path, cwd: Path, *overrides: str, **env: str) -> dict:
    result = run([sys.executable, str(script), *overrides, "--cfg", "job", "--resolve"], cwd=cwd, **env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_default_paths_lie_under_the_repository_from_any_directory(repository_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg = resolved_config(repository_copy / "scripts" / "pretrain.py", elsewhere, "experiment=cifar_fs")
    paths = cfg["paths"]
    assert paths["runs"] == f"{repository_copy}/runs/cifar_fs"
    assert paths["results"] == f"{repository_copy}/results/cifar_fs"
    assert paths["figures"] == f"{repository_copy}/figures/cifar_fs"
    assert paths["data_cache"] == f"{repository_copy}/data_cache"
    assert cfg["data"]["root"] == f"{repository_copy}/data/cifar"
    mini = resolved_config(repository_copy / "scripts" / "metrics.py", elsewhere, "experiment=mini_imagenet")
    assert mini["data"]["root"] == f"{repository_copy}/data/mini-imagenet"
    assert not list(elsewhere.iterdir())


def test_freeenergy_root_moves_every_default_and_command_line_paths_stay_as_given(repository_copy, tmp_path):
    scratch = tmp_path / "scratch"
    cfg = resolved_config(
        repository_copy / "scripts" / "free_energy.py", tmp_path, "paths.results=mine", FREEENERGY_ROOT=str(scratch)
    )
    assert cfg["paths"]["runs"] == f"{scratch}/runs/default"
    assert cfg["data"]["root"] == f"{scratch}/data_cache"
    assert cfg["paths"]["results"] == "mine"  # relative to the current directory, as typed


def test_a_script_run_from_another_directory_writes_only_under_the_repository(repository_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tiny = [o for o in tiny_overrides(Path("unused")) if not o.startswith("paths.")]
    result = run(
        [sys.executable, str(repository_copy / "scripts" / "pretrain.py"), *tiny, "num_threads=1"], cwd=elsewhere
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(elsewhere.iterdir())
    assert len(list((repository_copy / "runs" / "smoke").glob("*/epoch_002/model.pt"))) == 1
    assert list((repository_copy / "data_cache").iterdir())


# ---------------------------------------------------------------- never replace results with emptier ones


def test_analysis_without_records_refuses_and_leaves_existing_results_untouched(tmp_path):
    cfg = compose_config(tiny_overrides(tmp_path))
    results, figures = Path(cfg.paths.results), Path(cfg.paths.figures)
    results.mkdir(parents=True)
    (results / "summary.csv").write_text("run_id,free_energy\nr,1.0\n")
    with pytest.raises(
        NoRecordsError, match=r"No finished checkpoint record .*nothing was written.*reproduce\.sh smoke"
    ):
        run_analysis(cfg)
    assert (results / "summary.csv").read_text() == "run_id,free_energy\nr,1.0\n"
    assert [p.name for p in results.iterdir()] == ["summary.csv"] and not figures.exists()


def test_figures_script_without_records_exits_with_what_to_run_first(tmp_path):
    result = run(
        [
            sys.executable,
            str(REPO / "scripts" / "figures.py"),
            "experiment=smoke",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ],
        cwd=tmp_path,
        FREEENERGY_ROOT=str(tmp_path),
    )
    assert result.returncode != 0
    assert "./reproduce.sh smoke" in result.stderr and "nothing was written" in result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


@pytest.mark.parametrize(
    "experiment, hint", [("cifar_fs", "data.download=true"), ("mini_imagenet", "mini-ImageNet copy")]
)
def test_reproduce_stops_before_any_job_when_the_data_folder_is_missing(experiment, hint, tmp_path):
    missing = tmp_path / "nowhere"
    result = run(
        [str(REPO / "reproduce.sh"), experiment, f"data.root={missing}"],
        cwd=tmp_path,
        FREEENERGY_PYTHON=sys.executable,
        FREEENERGY_ROOT=str(tmp_path),
    )
    assert result.returncode != 0
    assert f"data.root='{missing}' does not exist" in result.stderr and hint in result.stderr
    assert "Traceback" not in result.stderr
    assert "=== pretrain" not in result.stdout and not (tmp_path / "runs").exists()
    if experiment == "mini_imagenet":
        assert "data.download=true" not in result.stderr  # mini-ImageNet is never downloaded
