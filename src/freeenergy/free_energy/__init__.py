"""Pretraining (and downstream) free energy of a checkpoint: localized WBIC and LLC, by SGLD.

The numerical core (no config, no files): ``sampler`` (the SGLD update and chains), ``batched``,
``estimator``, ``diagnostics``, ``auto`` (the automatic ε and γ), ``calibration`` (the ε × γ grid),
``head``, ``learning_coefficients`` (known answers). ``config`` adapts the ``free_energy.*`` config to it;
``step`` and ``calibrate_step`` are the study's steps.
"""

from freeenergy.free_energy.diagnostics import Health, HealthCriteria
from freeenergy.free_energy.estimator import estimate_free_energy, sample_free_energy
from freeenergy.free_energy.sampler import SGLDSettings, default_nbeta
from freeenergy.free_energy.summary import FreeEnergyEstimate

__all__ = [
    "FreeEnergyEstimate",
    "Health",
    "HealthCriteria",
    "SGLDSettings",
    "default_nbeta",
    "estimate_free_energy",
    "sample_free_energy",
]
