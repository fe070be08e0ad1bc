"""Pretraining (and downstream) free energy of a checkpoint: localized WBIC and LLC, by SGLD."""

from freeenergy.free_energy.diagnostics import Health, HealthCriteria
from freeenergy.free_energy.estimator import FreeEnergyEstimate, SGLDSettings, estimate_free_energy

__all__ = ["FreeEnergyEstimate", "Health", "HealthCriteria", "SGLDSettings", "estimate_free_energy"]
