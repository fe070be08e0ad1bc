"""Agreement with devinterp 1.3.2 (the reference LLC implementation) on a small CNN checkpoint.

Both run SGLD with the same ε, γ, nβ (passed explicitly as n / log n: devinterp's default would be
built from the batch size), chains, draws and batch size, on the same data, from the same checkpoint.
The CNN has no batch norm or dropout, so devinterp's train-mode sampling and our eval-mode sampling are
the same function of the weights. devinterp's own baseline L_n(w*) would come from its first few
minibatches; we hand it our full-data L_n(w*) instead, so the two LLCs differ only through the sampled
losses. What is compared:

1. devinterp's reported LLC equals nβ·(mean of its loss trace − L_n(w*)): the same formula as ours;
2. the mean sampled loss L̄ (hence the LLC, and the free energy n·L̄) of the two samplers agree within
   4 combined standard errors of their per-chain means, sqrt((s_ours² + s_devinterp²) / C).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.free_energy import estimate_free_energy

devinterp_sampler = pytest.importorskip(
    "devinterp.slt.sampler", reason="devinterp==1.3.2 is a test-only dependency (requirements-dev.txt)"
)

N, CLASSES, CHAINS, DRAWS, BATCH = 512, 4, 6, 150, 64
STEP_SIZE, LOCALIZATION = 2e-4, 100.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting


def trained_cnn(inputs: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """A small CNN without batch norm, trained briefly (full batch) into a low-loss region: the checkpoint."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.eval()


def teacher_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose labels a fixed random CNN assigns: learnable, so the checkpoint can fit them."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(N, 3, 8, 8, generator=generator)
    teacher = nn.Conv2d(3, CLASSES, 8)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(teacher.weight.shape, generator=generator))
        labels = teacher(inputs).flatten(1).argmax(1)
    return inputs, labels


def test_llc_agrees_with_devinterp_within_chain_spread():
    inputs, labels = teacher_data()
    model = trained_cnn(inputs, labels)
    nbeta = N / math.log(N)
    ours = estimate_free_energy(
        model,
        (inputs, labels),
        num_chains=CHAINS,
        num_draws=DRAWS,
        step_size=STEP_SIZE,
        localization=LOCALIZATION,
        nbeta=nbeta,
        batch_size=BATCH,
        seed=0,
    )
    assert not ours.diverged and ours.llc > 0

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, labels), batch_size=BATCH, shuffle=True, drop_last=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp warns about seeding, nbeta and its deprecated SGLD class
        theirs = devinterp_sampler.estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]),
            optimizer_kwargs=dict(lr=STEP_SIZE, localization=LOCALIZATION, nbeta=nbeta),
            num_chains=CHAINS,
            num_draws=DRAWS,
            init_loss=ours.init_loss,
            seed=0,
            device="cpu",
            verbose=False,
        )
    their_trace = np.asarray(theirs["loss/trace"], dtype=np.float64)
    assert their_trace.shape == ours.loss_trace.shape == (CHAINS, DRAWS)

    # 1. the same LLC formula, from the same baseline
    assert theirs["llc/mean"] == pytest.approx(nbeta * (their_trace.mean() - ours.init_loss), rel=1e-4)

    # 2. the same sampled distribution: mean loss (and so LLC) within the combined chain spread
    our_chain_means, their_chain_means = ours.draws.mean(axis=1), their_trace.mean(axis=1)
    combined = math.sqrt((our_chain_means.var(ddof=1) + their_chain_means.var(ddof=1)) / CHAINS)
    assert abs(our_chain_means.mean() - their_chain_means.mean()) <= 4 * combined, (ours.llc, theirs["llc/mean"])
    combined_llc = math.sqrt((ours.llc_std**2 + theirs["llc/std"] ** 2) / CHAINS)
    assert abs(ours.llc - theirs["llc/mean"]) <= 4 * combined_llc
    # ... and the comparison has power: both are far from 0 relative to that spread
    assert ours.llc > 8 * combined_llc
