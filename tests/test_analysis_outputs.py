"""The analysis outputs: the script end to end, what the figures draw and say, byte-for-byte reruns, and
atomic writes (a failed or killed write keeps the previous file). Fabricated records: tests/test_analysis.py."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import compose_config
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from test_analysis import EPOCHS, N_UP, SEEDS, Fake, fake  # noqa: F401  (fake is a fixture)

from freeenergy.analysis import run_analysis
from freeenergy.analysis.figures import draw_sweep, expected_files
from freeenergy.analysis.output import remove_leftover_temp_files, write_csv
from freeenergy.analysis.plotting import FLAGGED_GID, column_labels, plotting_frame, save
from freeenergy.analysis.report import RESULT_FILES
from freeenergy.analysis.sgld_figures import draw_terms, draw_traces
from freeenergy.analysis.stats import BootstrapSettings, correlation_table
from freeenergy.analysis.table import build_summary
from freeenergy.pretrain.sweeps import study_runs
from freeenergy.records.io import save_figure

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "figures.py"
SRC = Path(__file__).resolve().parents[1] / "src"


def run_script(fake: Fake, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *fake.overrides,
            "analysis.dpi=60",
            *extra,
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_script_writes_every_output(fake, tmp_path):
    """The Hydra entry point as reproduce.sh runs it."""
    cfg, runs = fake.cfg, len(fake.study.run_ids)
    result = run_script(fake, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(Path(cfg.paths.figures).iterdir()) == sorted(expected_files(cfg.paths.figures))
    for path in expected_files(cfg.paths.figures):
        assert path.stat().st_size > 1000, path
    results = Path(cfg.paths.results)
    assert sorted(p.name for p in results.iterdir()) == sorted(RESULT_FILES)
    summary = pd.read_csv(results / "summary.csv")
    assert len(summary) == runs * len(EPOCHS) and summary.free_energy_diverged.sum() == 1
    assert (summary.free_energy_healthy == False).sum() == 2  # noqa: E712  (diverged + unhealthy; legacy empty)
    correlations = pd.read_csv(results / "correlations.csv")
    assert set(correlations.group) == {"pooled", "lr", "batch_size", "momentum"}
    assert set(correlations.method) == {"pearson", "spearman", "kendall"}
    assert set(correlations.checkpoints) == {"final", "all"}
    cell = correlations.set_index(["checkpoints", "group", "metric", "target", "method"])
    final = cell.loc[("final", "pooled", "free_energy", "finetune_acc", "pearson")]
    assert (final.n, final.runs, final.left_out) == (runs - 2, runs - 2, 2)
    assert cell.loc[("all", "pooled", "free_energy", "finetune_acc", "pearson"), "runs"] == runs
    level = pd.read_csv(results / "level_set.csv")
    assert set(level.checkpoints) == {"final", "all"} and set(level.metric) == {"free_energy", "llc", "train_loss"}
    assert (level[level.checkpoints == "final"].in_band == runs - 1).all()
    markdown = (results / "correlations.md").read_text()
    for words in (
        "Table 1: Pearson r, `checkpoints=final`",
        "Table 1: Pearson r, `checkpoints=all`",
        "§5.2",
        "resamples of runs",
        "LLC",
        "Train loss (eval mode)",
        "not levelled off",
        "chains disagree",
        "upstream: 2 flagged of 45 estimates (1 more recorded without health checks",
    ):
        assert words in markdown, words
    level_line, headline = result.stdout.strip().splitlines()[-2:]
    assert headline.startswith("Pretraining free energy") and "checkpoints=final" in headline
    assert "fine-tuning acc. r = -" in headline and "[" in headline
    assert level_line.startswith("Level set train_loss ≤ 0.05") and "λ̂ -" in level_line
    assert (results / "headline.txt").read_text().splitlines() == [level_line, headline]


@pytest.fixture
def drawn(fake):
    """The summary and its final-checkpoint correlations, for drawing figures in-process."""
    table = build_summary(fake.cfg.paths.runs, study_runs(fake.cfg))
    correlations = correlation_table(
        table,
        ["free_energy"],
        ["finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc"],
        ["pearson"],
        "final",
        BootstrapSettings(resamples=100),
    )
    yield table, correlations
    plt.close("all")


def test_a_redraw_is_byte_identical(fake, drawn, tmp_path):
    """PNG and PDF drawn twice, a clock second apart (a PDF creation date would differ), are the same bytes;
    so are the tables computed twice."""
    table, correlations = drawn
    paths = []
    for folder in ("first", "second"):
        time.sleep(max(0.0, 1.05 - (time.time() % 1)))  # cross a second boundary between the two drawings
        paths.append(save(draw_terms(table, column_labels(5)), tmp_path / folder, "terms", dpi=40))
        write_csv(
            tmp_path / folder / "correlations.csv",
            correlation_table(
                table,
                ["free_energy", "train_loss"],
                ["finetune_acc"],
                ["pearson", "kendall"],
                "all",
                BootstrapSettings(resamples=100),
            ),
        )
        paths[-1].append(tmp_path / folder / "correlations.csv")
    assert [p.name for p in paths[0]] == ["terms.png", "terms.pdf", "correlations.csv"]
    for first, second in zip(*paths):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_sweep_figure_gives_seeds_per_curve_and_never_averages_a_flagged_estimate(fake, drawn):
    table, correlations = drawn
    chosen = table[table.is_final]
    fig = draw_sweep(table, chosen, correlations, "lr", column_labels(5), "final")
    assert "3 seeds per curve" in fig._suptitle.get_text() and "red ×: flagged" in fig._suptitle.get_text()
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert sum("(3 seeds)" in label for label in legend) == 3 and "flagged estimate" in legend
    free_energy_panel = fig.axes[0]
    assert "× 2 flagged, left out" in free_energy_panel.get_title()  # the diverged and the unhealthy one
    # The epoch-4 mean of each setting is the mean over its healthy seeds only.
    lr_sweep = plotting_frame(table[table.in_lr_sweep.astype(bool)], "lr")
    flagged_keys = {fake.study.special["diverged"], fake.study.special["unhealthy"]}
    healthy = lr_sweep[[(r, e) not in flagged_keys for r, e in zip(lr_sweep.run_id, lr_sweep.epoch)]]
    expected = sorted(healthy[healthy.epoch == 4].groupby("lr").free_energy.mean())
    drawn_means = sorted(
        line.get_ydata()[list(line.get_xdata()).index(4)]
        for line in free_energy_panel.lines
        if 4 in list(line.get_xdata())
    )
    np.testing.assert_allclose(drawn_means, expected)
    crosses = [c for c in free_energy_panel.collections if c.get_gid() == FLAGGED_GID]
    assert sum(len(c.get_offsets()) for c in crosses) == 2
    scatter_titles = [ax.get_title() for ax in fig.axes[5:8]]
    assert all("final checkpoints of 7 runs" in t and "× 2 flagged" in t for t in scatter_titles), scatter_titles
    assert "different subsets" in fig._suptitle.get_text()  # curves: 9 runs, scatter panels: 7


def test_trace_figure_shades_the_burnin_and_draws_each_plateau(fake, drawn):
    table, _ = drawn
    fig = draw_traces(table, Path(fake.cfg.paths.runs), smoothing=3)
    lr_panel = fig.axes[0]  # upstream estimate, learning-rate sweep
    spans = [p for p in lr_panel.patches if isinstance(p, Rectangle) and p.get_width() == 5]
    assert len(spans) == 1 and spans[0].get_x() == 0  # the burn-in: hyperparameters.num_burnin = 5
    plateaus = sorted(
        seg[0][1] for c in lr_panel.collections if isinstance(c, LineCollection) for seg in c.get_segments()
    )
    finals = table[table.is_final & table.in_lr_sweep.astype(bool) & (table.seed == min(SEEDS))]
    expected = sorted(fake.study.llc[(r, 4)] * math.log(N_UP) / N_UP for r in finals.run_id)  # λ̂ / nβ
    np.testing.assert_allclose(plateaus, expected, rtol=1e-5)
    labels = [t.get_text() for t in lr_panel.get_legend().get_texts()]
    assert "burn-in (5 steps)" in labels and any("(not levelled off)" in label for label in labels)
    dotted = [line for line in lr_panel.lines if line.get_linestyle() == ":"]
    assert len(dotted) == 1  # the unhealthy estimate (seed 0 of 2·lr), and only it
    assert (
        "Shaded: burn-in (5 steps, left out)" in fig._suptitle.get_text()
        and "dashed: plateau" in fig._suptitle.get_text()
    )


def test_terms_figure_shows_the_share_of_the_complexity_term(drawn):
    table, _ = drawn
    fig = draw_terms(table, column_labels(5))
    share_panels = [ax for ax in fig.axes if ax.get_ylabel() == "Share of λ̂·log n in F (%)"]
    assert len(share_panels) == 3
    healthy = table[table.free_energy_healthy.fillna(True).astype(bool) & table.in_momentum_sweep.astype(bool)]
    share = 100 * healthy.fe_complexity_share
    assert f"median {share.median():.2g}%" in share_panels[2].get_title()
    assert "3 seeds per curve" in fig._suptitle.get_text()


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Disk full at flush time (CSV) and an exception half-way through drawing (PNG, PDF)."""
    csv, png = tmp_path / "correlations.csv", tmp_path / "sweep_lr.png"
    write_csv(csv, pd.DataFrame({"r": [0.5, -0.25]}))
    fig = plt.figure(figsize=(2, 2))
    save_figure(fig, png, dpi=50)
    old_csv, old_png = csv.read_bytes(), png.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            write_csv(csv, pd.DataFrame({"r": np.arange(1000.0)}))
    original_savefig = Figure.savefig

    def half_then_fail(self, handle, **kwargs):
        handle.write(b"\x89PNG half a file")
        raise RuntimeError("killed while drawing")

    for path in (png, tmp_path / "sweep_lr.pdf"):  # an existing file, and a new one
        with monkeypatch.context() as patch:
            patch.setattr(Figure, "savefig", half_then_fail)
            with pytest.raises(RuntimeError, match="killed while drawing"):
                save_figure(fig, path, dpi=50)
    assert Figure.savefig is original_savefig
    plt.close(fig)
    assert csv.read_bytes() == old_csv and png.read_bytes() == old_png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["correlations.csv", "sweep_lr.png"]
    with pytest.raises(ValueError, match="svg"):
        save_figure(plt.figure(), tmp_path / "figure.svg", dpi=50)


def test_a_killed_figure_write_keeps_the_old_png_and_the_next_analysis_cleans_up(tmp_path):
    """SIGKILL while drawing a PNG (in memory) or while writing it: the old PNG is intact; a leftover temporary
    file goes next time."""
    png = tmp_path / "sweep_lr.png"
    png.write_bytes(b"the previous figure")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    kill = "import os, signal\ndef killed(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    for patch in ("Figure.savefig = killed", "os.fsync = killed"):  # while drawing, then while writing the file
        code = f"""{kill}
from matplotlib.figure import Figure
from freeenergy.records.io import save_figure
{patch}
save_figure(Figure(), {str(png)!r}, dpi=50)
"""
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        assert png.read_bytes() == b"the previous figure"
    leftovers = list(tmp_path.glob(".sweep_lr.png.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].read_bytes().startswith(b"\x89PNG")
    (tmp_path / ".unrelated.tmp").write_text("not ours")
    assert remove_leftover_temp_files(tmp_path, ["sweep_lr.png", "summary.csv"]) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".unrelated.tmp", "sweep_lr.png"]


def test_analysis_on_a_full_disk_leaves_the_previous_outputs_intact(fake, monkeypatch):
    """Leftover temporary files are removed first; then every write fails: no output is replaced or truncated."""
    results, figures = Path(fake.cfg.paths.results), Path(fake.cfg.paths.figures)
    results.mkdir(parents=True)
    figures.mkdir(parents=True)
    previous = {results / name: f"previous {name}".encode() for name in RESULT_FILES}
    previous[figures / "sweep_lr.png"] = b"previous png"
    for path, data in previous.items():
        path.write_bytes(data)
    stale = [results / ".correlations.csv.k2j3.tmp", figures / ".sweep_lr.png.x8y9.tmp"]
    for path in stale:
        path.write_bytes(b"left by a killed run")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_analysis(fake.cfg)
    assert {path: path.read_bytes() for path in previous} == previous
    assert not any(path.exists() for path in stale)
    assert not [p for folder in (results, figures) for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_bad_level_set_is_refused_before_anything_is_written(fake):
    cfg = compose_config(fake.overrides + ["analysis.level_set.relative=0.5"])  # and max: 0.05 → both set
    with pytest.raises(ValueError, match="analysis.level_set.max=0.05 and analysis.level_set.relative=0.5"):
        run_analysis(cfg)
    assert not Path(cfg.paths.results).exists() and not Path(cfg.paths.figures).exists()


def test_analysis_path_loads_no_torch():
    """Redrawing from records takes seconds because neither torch nor a model is imported."""
    code = "import sys, freeenergy.analysis.report; assert not {'torch', 'timm'} & set(sys.modules), 'torch imported'"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


# Direct writes that leave a half-written file behind when a job is killed; records.py is the one writer.
DIRECT_WRITE = ("open(", ".write_text(", ".write_bytes(", ".savefig(", "torch.save(", "np.save(", "save_file(")


def _direct_writes(source: str) -> list[str]:
    hits = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0]
        if ".to_csv(" in code and ".to_csv(index=False)" not in code:
            hits.append(f"{number}: {line.strip()}")
        elif any(call in code for call in DIRECT_WRITE) and not code.lstrip().startswith(('"', "'", "-", "``")):
            if "open(" in code and not any(mode in code for mode in ('"w', "'w", '"a', "'a", '"x', "'x")):
                continue  # a read
            hits.append(f"{number}: {line.strip()}")
    return hits


def test_every_output_of_the_package_is_written_through_the_atomic_writers():
    package = Path(__file__).resolve().parents[1] / "src" / "freeenergy"
    offenders = {}
    for path in package.rglob("*.py"):
        if path.relative_to(package).as_posix() == "records/io.py":  # the atomic writers themselves
            continue
        hits = [hit for hit in _direct_writes(path.read_text()) if "records.write_text(" not in hit]
        if hits:
            offenders[str(path.relative_to(package))] = hits
    assert not offenders, f"write through freeenergy.records (write_json, write_text, save_figure): {offenders}"


def test_the_direct_write_scan_finds_a_plain_to_csv_and_savefig():
    sample = 'table.to_csv(path, index=False)\nfigure.savefig("a.png")\nwith open(p, "w") as f:\nwith open(p) as f:\n'
    assert [hit.split(":")[0] for hit in _direct_writes(sample)] == ["1", "2", "3"]


def test_the_analysis_writes_the_same_bytes_whatever_the_blas_kernel_and_thread_count(fake, tmp_path):
    """Issue 24 (7): a redraw on another CPU changed committed intervals in the second decimal. The arithmetic
    of every estimate and interval is numpy's own (no BLAS), so forcing OpenBLAS's Haswell kernels or two
    threads must not change one byte of any table or figure."""
    outputs = {}
    for name, env in {
        "default": {},
        "two threads": {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
        "haswell kernels": {"OPENBLAS_CORETYPE": "Haswell"},
    }.items():
        folder = tmp_path / name.replace(" ", "_")
        result = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                *fake.overrides,
                "analysis.dpi=40",
                "analysis.bootstrap=300",
                "analysis.selection_bootstrap=100",
                "analysis.permutations=2000",
                f"paths.results={folder / 'results'}",
                f"paths.figures={folder / 'figures'}",
                f"hydra.run.dir={folder / 'hydra'}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = {
            path.relative_to(folder): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and "hydra" not in path.parts
        }
    reference = outputs.pop("default")
    assert len(reference) > 20
    for name, files in outputs.items():
        differing = sorted(str(path) for path in reference if files.get(path) != reference[path])
        assert not differing, f"{name}: {differing}"
