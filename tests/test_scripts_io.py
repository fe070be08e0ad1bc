"""What the scripts need of the file system and the terminal: an empty FREEENERGY_ROOT is the repository, reading
needs no write access, every process keeps its own Hydra folder, a full file system names the file, public
records are plain values, Ctrl-C is one line, and progress=false silences every bar."""

from __future__ import annotations

import ast
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, read_write
from readonly import read_only

from freeenergy import cli, runtime
from freeenergy.records.io import write_json, write_text

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "FREEENERGY_ROOT"}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), environment.get("PYTHONPATH", "")])
    environment.update(env)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- FREEENERGY_ROOT


def test_an_empty_freeenergy_root_means_the_repository_not_the_file_system_root(tmp_path):
    result = run(
        [sys.executable, str(REPO / "scripts" / "plan.py"), "experiment=smoke"], cwd=tmp_path, FREEENERGY_ROOT=""
    )
    assert result.returncode == 0, result.stderr
    assert f"on disk ({REPO / 'runs' / 'smoke'})" in result.stdout


# ---------------------------------------------------------------- reading needs no write access


def test_a_write_of_unchanged_content_needs_no_write_access(tmp_path):
    write_text(tmp_path / "table.csv", "a,b\n1,2\n")
    write_json(tmp_path / "record.json", {"x": np.int64(3)})
    with read_only(tmp_path):
        write_text(tmp_path / "table.csv", "a,b\n1,2\n")
        write_json(tmp_path / "record.json", {"x": 3})
        with pytest.raises(PermissionError, match="table.csv"):
            write_text(tmp_path / "table.csv", "a,b\n1,3\n")


def test_figures_redraw_from_a_read_only_runs_folder(tmp_path):
    runs = REPO / "runs" / "default"
    if not any(runs.glob("*/epoch_*/free_energy.json")):
        pytest.skip("no committed default study")
    command = [
        sys.executable,
        str(REPO / "tests" / "readonly.py"),
        str(runs),
        str(REPO / "scripts" / "figures.py"),
        "experiment=default",
        f"paths.results={tmp_path / 'results'}",
        f"paths.figures={tmp_path / 'figures'}",
        "analysis.bootstrap=20",
    ]
    result = run(command, OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "results" / "summary.csv").is_file() and any((tmp_path / "figures").glob("*.png"))


def test_every_process_has_its_own_hydra_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setenv("FREEENERGY_ROOT", str(tmp_path))
    cli.prepare_entry_point(REPO / "scripts" / "metrics.py", "doc")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=smoke"], return_hydra_config=True)
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        assert OmegaConf.select(cfg, key).endswith(f"-{os.getpid()}"), key


def test_two_jobs_started_together_keep_both_their_overrides(tmp_path):
    command = lambda index: [  # noqa: E731
        sys.executable,
        str(REPO / "scripts" / "metrics.py"),
        "experiment=smoke",
        f"paths.runs={tmp_path / 'runs'}",
        f"shard.index={index}",
        "shard.count=2",
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    jobs = [
        subprocess.Popen(command(i), env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)
    ]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read().decode()[-2000:]
    overrides = sorted((tmp_path / "runs" / ".hydra").glob("*/.hydra/overrides.yaml"))
    assert len(overrides) == 2
    assert sorted("shard.index=0" in p.read_text() for p in overrides) == [False, True]


# ---------------------------------------------------------------- a full file system names the file


def _with_file_size_limit(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize(
    "write",
    [
        "from freeenergy.records.io import save_torch; import torch; save_torch(PATH, torch.zeros(100_000))",
        "from freeenergy.records.io import write_json; write_json(PATH, {'trace': list(range(100_000))})",
    ],
)
def test_a_file_over_the_size_limit_names_the_file_and_the_fix(tmp_path, write):
    path = tmp_path / "big.out"
    code = write.replace("PATH", repr(str(path)))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_with_file_size_limit(50_000),
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("OSError: [Errno 27]") and f"{path}: cannot be written (File too large)" in last, last
    assert "ulimit -f" in last and not path.exists() and not list(tmp_path.glob(".big.out.*"))


def test_a_full_disk_or_a_read_only_folder_is_a_user_error():
    for code in (errno.EFBIG, errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        assert cli.is_user_error(OSError(code, "x"))
    assert not cli.is_user_error(OSError(errno.EIO, "x")) and not cli.is_user_error(RuntimeError("bug"))


# ---------------------------------------------------------------- public records hold plain values


def test_an_estimate_made_with_numpy_counts_gives_a_json_record():
    from freeenergy.free_energy.estimator import estimate_free_energy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    estimate = estimate_free_energy(
        model,
        (inputs, targets),
        num_chains=np.int64(2),
        num_draws=np.int64(8),
        num_burnin=np.int64(2),
        step_size=np.float32(1e-4),
        localization=np.float64(100.0),
        batch_size=np.int64(32),
        seed=np.int64(0),
    )
    record = json.loads(json.dumps(estimate.to_record(extra=np.int64(1))))
    assert record["hyperparameters"]["batch_size"] == 32 and record["extra"] == 1
    assert type(estimate.settings.batch_size) is int and type(estimate.settings.step_size) is float


def test_settings_refuse_a_count_that_is_not_an_integer_by_name():
    from freeenergy.free_energy.sampler import SGLDSettings

    with pytest.raises(ValueError, match=r"num_draws=2.5 is not allowed: an integer"):
        SGLDSettings(2, 2.5, 0, 1e-4, 100.0, 10.0, 32, 0)
    with pytest.raises(ValueError, match=r"step_size='auto' is not allowed: a number"):
        SGLDSettings(2, 8, 0, "auto", 100.0, 10.0, 32, 0)


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_outside_the_task_is_one_line_and_status_130(tmp_path):
    code = (
        "import sys; sys.argv = ['plan.py']; from freeenergy.cli import prepare_entry_point; "
        f"prepare_entry_point({str(REPO / 'scripts' / 'plan.py')!r}, 'doc'); raise KeyboardInterrupt"
    )
    result = run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode in (130, -2)
    assert result.stderr.strip() == cli.INTERRUPTED_MESSAGE and "Traceback" not in result.stderr


def test_ctrl_c_inside_the_task_is_one_line_and_status_130(capsys):
    def task():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        cli.user_errors(task)()
    assert stopped.value.code == 130 and capsys.readouterr().err.strip() == cli.INTERRUPTED_MESSAGE


# ---------------------------------------------------------------- progress bars


def test_progress_false_silences_every_bar_the_synthetic_data_s_too(tmp_path, capsys):
    from freeenergy.data.synthetic import load_synthetic

    seen = cli.checked_config(lambda cfg: runtime._bars["shown"])
    assert seen(compose_config(["experiment=smoke", "progress=false"])) is False
    try:
        load_synthetic(root=str(tmp_path), image_size=8, images_per_class=2)
    finally:
        runtime.set_progress(True)
    assert "synthetic data" not in capsys.readouterr().err
    assert seen(compose_config(["experiment=smoke", "progress=true"])) is True


def test_no_module_draws_a_bar_but_through_progress_bar():
    direct = []
    for path in (REPO / "src" / "freeenergy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tqdm":
                direct.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert direct == [str(Path("src/freeenergy/runtime.py")) + f":{_tqdm_line()}"]


def _tqdm_line() -> int:
    source = (REPO / "src" / "freeenergy" / "runtime.py").read_text()
    return next(n for n, line in enumerate(source.splitlines(), 1) if "return tqdm(" in line)


def test_the_jobs_of_a_parallel_multirun_draw_no_bars():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def job_of(launcher: str, mode: RunMode) -> bool:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        with read_write(cfg):
            cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)
        return cli.parallel_job()

    try:
        assert job_of("joblib", RunMode.MULTIRUN) and job_of("submitit_local", RunMode.MULTIRUN)
        assert not job_of("basic", RunMode.MULTIRUN) and not job_of("joblib", RunMode.RUN)
    finally:
        HydraConfig.instance().cfg = None


# ---------------------------------------------------------------- the Python version


def test_reproduce_refuses_a_python_older_than_it_needs_and_says_what_is_needed(tmp_path):
    old = tmp_path / "python3.10"  # this interpreter, claiming to be 3.10.0
    claim = "import sys; sys.version_info = (3, 10, 0, 'final', 0); exec(compile(sys.argv[1], '-c', 'exec'))"
    old.write_text(f'#!/bin/sh\n[ "$1" = -c ] && exec {sys.executable} -c "{claim}" "$2"\nexec {sys.executable} "$@"\n')
    old.chmod(0o755)
    result = run([str(REPO / "reproduce.sh"), "smoke", "--dry-run"], cwd=tmp_path, FREEENERGY_PYTHON=str(old))
    assert result.returncode == 2 and result.stdout == ""
    assert "FREEENERGY_PYTHON is Python 3.10.0" in result.stderr and "needs Python 3.11 or newer" in result.stderr
    fine = run([str(REPO / "reproduce.sh"), "smoke", "--dry-run"], cwd=tmp_path, FREEENERGY_PYTHON=sys.executable)
    assert fine.returncode == 0, fine.stderr


def test_no_test_needs_a_newer_python_than_the_one_reproduce_sh_checks_for():
    calls = [
        f"{path.name}:{node.lineno}"
        for path in [*(REPO / "tests").glob("*.py"), *(REPO / "src").rglob("*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "extractall"
    ]
    assert calls == []  # tarfile's extractall(filter=…) needs Python 3.11.4; reproduce.sh asks for 3.11
