"""The rank command's other selectors beside F (rank.selectors): label-free by default, label-using with
rank.downstream_data, their values in ranking.csv/md and the candidates' records, refusals before any work."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_rank import project, rank_config, tiny_overrides, write_image_folder  # noqa: F401 (fixture)

from freeenergy.rank import run_rank
from freeenergy.rank.report import COLUMNS
from freeenergy.records.io import read_json
from freeenergy.selectors.catalog import LABEL_USING

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def test_label_using_selectors_join_when_labelled_downstream_data_is_given_and_are_reused(project, tmp_path, capsys):
    labelled = write_image_folder(tmp_path / "downstream", classes=3, per_class=8, seed=5)
    out = tmp_path / "out"
    cfg = rank_config(tiny_overrides(project, out, f"rank.downstream_data={labelled}", "rank.step_check=false"))
    result = run_rank(cfg)
    kinds = ["rankme", "alpha_req", *LABEL_USING]
    assert list(result.table.columns) == COLUMNS + kinds
    ranked = result.table[result.table["rank"].notna()]
    assert ranked[kinds].notna().all().all() and (ranked["knn"].between(0, 1)).all() and (ranked["leep"] <= 0).all()
    unranked = result.table[result.table["rank"].isna()]
    assert unranked[kinds].isna().all().all()  # files that did not load have no values
    csv = pd.read_csv(result.csv_path)
    assert list(csv.columns) == COLUMNS + kinds
    text = result.markdown_path.read_text()
    assert "## Other selectors beside F" in text and "`logme`: LogME" in text and "Kendall τ with F's order" in text
    records = [read_json(p) for p in (out / "results" / "records").glob("*.json")]
    assert all(set(r["selectors"]) == set(kinds) and r["selectors"]["knn"]["n"] == 24 for r in records)

    stamps = {p: p.stat().st_mtime_ns for p in (out / "results" / "records").glob("*.json")}
    again = run_rank(cfg)  # nothing recomputed: the estimates and the selectors are reused
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(again.table, result.table)
    capsys.readouterr()


def test_rank_refuses_selectors_it_cannot_feed_before_any_work(project, tmp_path):
    base = tiny_overrides(project, tmp_path / "out")
    with pytest.raises(ValueError, match=r"\['logme'\] read labelled downstream images; give rank.downstream_data"):
        run_rank(rank_config(base + ["rank.selectors=[rankme,logme]"]))
    with pytest.raises(ValueError, match="rank.downstream_data='nowhere' is not a folder"):
        run_rank(rank_config(base + ["rank.downstream_data=nowhere"]))
    with pytest.raises(ValueError, match="unknown selector"):
        run_rank(rank_config(base + ["rank.selectors=[rank_me]"]))
    labelled = write_image_folder(tmp_path / "downstream", classes=2, per_class=3)
    with pytest.raises(ValueError, match="selectors.knn.k=10 is not below the 6 images"):
        run_rank(rank_config(base + [f"rank.downstream_data={labelled}"]))
    assert not (tmp_path / "out" / "results" / "ranking.csv").exists()
    assert not list((tmp_path / "out").glob("results/records/*.json")) or all(
        "estimate" not in read_json(p) for p in (tmp_path / "out").glob("results/records/*.json")
    )


def test_no_selectors_leaves_the_table_as_it_was(project, tmp_path):
    cfg = rank_config(tiny_overrides(project, tmp_path / "out", "rank.selectors=[]", "rank.step_check=false"))
    result = run_rank(cfg)
    assert list(result.table.columns) == COLUMNS and "Other selectors" not in result.markdown_path.read_text()
    assert all(math.isfinite(v) for v in result.table["free_energy"].dropna())
