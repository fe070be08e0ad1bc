"""A fast subset of ``benchmarks/validate_llc.py``: our estimator recovers known learning coefficients.

Three cases of the validation, one per singular family (the regular d/2 and the exact quadratic answer are in
tests/test_free_energy.py): reduced-rank regression 5→4→5 at rank 2 (λ = 21/2, Aoyagi & Watanabe 2005), the
deep linear network 4→8→8→4 at rank 2 (λ = 8, Aoyagi 2024) and the normal crossing y = w²·x (λ = 1/4). Each
runs with the validation's data, w*, ε, γ, nβ and batch, but many short chains at once (``vectorize_chains``:
3–4× cheaper per chain-step than one chain after another on a CPU), 40–50 s in all on one shared core.

Tolerances come from the measured spread: at each case's CI settings λ̂ was estimated with seeds 0–7
(``python tests/test_llc_validation.py``; ``MEASURED`` holds the mean and standard deviation over the seeds),
and the tolerance is |mean − λ| + 4·sd: a correct estimator fails only on a 4-sigma draw. Each tolerance is
also required to be small enough to exclude the answers of a broken estimator (``POWER``): noise of variance
2ε instead of ε samples at half the inverse temperature and doubles λ̂; a factor wrong in nβ (in the drift or
in λ̂ = nβ·(L̄ − L_n(w*))) scales λ̂ by it; a sign wrong in the localization makes the chains run away. The tests run with seed 0 (bit-for-bit reproducible on one platform and thread count).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_validation():
    """benchmarks/validate_llc.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("validate_llc", REPO / "benchmarks" / "validate_llc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting
validation = load_validation()
CASES = {case.name: case for case in validation.CASES}
# case → (chains, burn-in, draws) per chain, at the validation's ε, γ, nβ and batch; burn-in and draws are whole
# passes over the data (4 minibatches; 40 for w²·x), so the minibatch noise of the draws cancels at a fixed w
CI_SETTINGS = {"rrr_5-4-5_r2": (32, 2000, 2000), "dln_4-8-8-4_r2": (32, 4000, 2000), "nc_k2": (64, 2000, 4000)}
# case → (mean, sd) of λ̂ over seeds 0–7 at CI_SETTINGS (python tests/test_llc_validation.py, one thread)
MEASURED = {"rrr_5-4-5_r2": (9.977, 0.223), "dln_4-8-8-4_r2": (7.534, 0.162), "nc_k2": (0.2557, 0.0120)}
# case → the largest tolerance, as a fraction of λ, that still tells λ from a broken estimator's answer; for
# the normal crossing it must at least exclude 1/2 (a regular parameter) and 1/6 (w³·x)
POWER = {"rrr_5-4-5_r2": 0.15, "dln_4-8-8-4_r2": 0.15, "nc_k2": 0.3}


def ci_settings(name: str, seed: int = 0):
    """The validation's settings for this case (ε rule, γ, batch) with the CI chains, burn-in and draws."""
    chains, burnin, draws = CI_SETTINGS[name]
    return replace(
        validation.BUDGET.for_case(CASES[name]), num_chains=chains, num_burnin=burnin, num_draws=draws, seed=seed
    )


def tolerance(name: str) -> float:
    mean, sd = MEASURED[name]
    return abs(mean - float(CASES[name].known())) + 4 * sd


def run_ci_case(name: str, seed: int = 0):
    """λ̂ (ours) on one case at its CI settings, all chains at once."""
    problem = validation.build_problem(CASES[name], seed=0)
    return validation.run_ours(problem, ci_settings(name, seed), vectorize_chains=True)


@pytest.mark.parametrize("name", list(CI_SETTINGS))
def test_known_learning_coefficient_is_recovered(name):
    truth = float(CASES[name].known())
    assert tolerance(name) < POWER[name] * truth  # the check has power: a wrong estimator misses by far more
    result = run_ci_case(name)
    assert "diverged" not in result.flags, result.flags
    assert abs(result.llc - truth) <= tolerance(name), (name, result.llc, result.llc_std, truth, tolerance(name))


def test_the_cases_are_built_at_a_critical_point_with_the_known_answer():
    for name in CI_SETTINGS:
        problem = validation.build_problem(CASES[name])
        assert problem.grad_norm_sq < 1e-20  # w* is the sample minimiser on the true stratum (float64)
        assert problem.curvature > 0
    assert float(CASES["rrr_5-4-5_r2"].known()) == 10.5 and float(CASES["nc_k2"].known()) == 0.25
    assert float(CASES["dln_4-8-8-4_r2"].known()) == 8


def test_records_are_keyed_by_case_and_settings(tmp_path):
    case, tiny = CASES["nc_k2"], replace(validation.BUDGET, scale=0.01)
    assert validation.finished(tmp_path, case, tiny, "ours") is None
    record = validation.run_task(case, tiny, "ours", str(tmp_path))
    assert record["settings"]["num_burnin"] == 80 and record["settings"]["num_draws"] == 400  # whole passes of 40
    assert validation.finished(tmp_path, case, tiny, "ours") == record
    assert validation.finished(tmp_path, case, validation.BUDGET, "ours") is None  # other settings: rerun
    rows = validation.table_rows({(case.name, "ours"): record}, (case,))
    assert rows[0]["true_llc"] == 0.25 and rows[0]["devinterp_llc"] is None


if __name__ == "__main__":  # how MEASURED was measured: λ̂ at the CI settings, seeds 0–7, one thread
    import torch

    torch.set_num_threads(1)
    for case_name in sys.argv[1:] or CI_SETTINGS:
        estimates = [run_ci_case(case_name, seed).llc for seed in range(8)]
        print(case_name, f"mean {np.mean(estimates):.4f} sd {np.std(estimates, ddof=1):.4f}", np.round(estimates, 3))
