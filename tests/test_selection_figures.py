"""The selector figures draw what the selection table holds, and a measure no selector was compared with leaves
an annotated empty panel instead of crashing the figure step (a log axis with no data has no limits)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from freeenergy.analysis.selection_figures import FREE_SECONDS, cost_data, draw_cost, draw_forest


def selection_rows() -> pd.DataFrame:
    rows = []
    for selector, value in (("free_energy", -0.6), ("train_loss", 0.4), ("lr", 0.2)):
        rows.append(
            dict(
                unit="runs",
                group="pooled",
                statistic="pearson",
                selector=selector,
                target="finetune_accuracy",
                value=value,
                ci_low=value - 0.2,
                ci_high=value + 0.2,
            )
        )
    return pd.DataFrame(rows)


def test_cost_data_puts_static_rankers_at_the_free_cost_and_takes_absolute_r():
    data = cost_data(selection_rows(), {"free_energy": 30.0, "train_loss": 0.5}, "finetune_accuracy")
    by_selector = data.set_index("selector")
    assert by_selector.loc["free_energy", "seconds"] == 30.0
    assert by_selector.loc["lr", "seconds"] == FREE_SECONDS
    assert math.isclose(by_selector.loc["free_energy", "abs_r"], 0.6)


def test_a_measure_without_selectors_leaves_an_annotated_panel_and_the_others_are_drawn():
    figure = draw_cost(selection_rows(), {"free_energy": 30.0}, ["finetune_accuracy", "fewshot_5shot_accuracy"])
    drawn, empty = figure.axes
    assert len(drawn.collections) == 3 and drawn.get_xscale() == "log"
    assert not empty.collections and "no selector" in empty.texts[0].get_text()
    figure.canvas.draw()  # the layout of a log axis without data used to raise here
    plt.close(figure)
    undefined = selection_rows().assign(value=float("nan"))  # r of a constant measure, as in a 2-run smoke study
    figure = draw_cost(undefined, {"free_energy": 30.0}, ["finetune_accuracy"])
    figure.canvas.draw()
    assert not figure.axes[0].collections and figure.axes[0].texts
    plt.close(figure)
    forest = draw_forest(selection_rows(), ["finetune_accuracy", "fewshot_5shot_accuracy"])
    assert len(forest.axes[0].lines) == 2 * 3 + 1  # interval and point per selector, the zero line
    plt.close(forest)


def test_the_jointly_drawn_settings_are_coloured_by_their_own_setting_labels():
    from freeenergy.analysis.plotting import PERCENT_COLUMNS, plotting_frame, setting_order

    rows = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "setting": ["lr0.3-bs40-m0.85", "lr0.12-bs100-m0.9", "lr0.3-bs40-m0.85"],
            "lr": [0.3, 0.12, 0.3],
            **{column: [0.5, 0.6, 0.55] for column in PERCENT_COLUMNS},
        }
    )
    joint = plotting_frame(rows, "joint")  # there is no column "joint": each run keeps its drawn setting
    assert list(joint.setting) == list(rows.setting) and joint.finetune_acc.round(6).tolist() == [50.0, 60.0, 55.0]
    assert setting_order(joint, "joint") == ["lr0.12-bs100-m0.9", "lr0.3-bs40-m0.85"]
    swept = plotting_frame(rows, "lr")
    assert setting_order(swept, "lr") == ["0.12", "0.3"] and list(swept.setting) == ["0.3", "0.12", "0.3"]
