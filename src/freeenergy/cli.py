"""What every script does before Hydra starts: anchor default paths at the repository, describe itself in --help.

Torch-free, so that a launcher's submitting process (Hydra's joblib or submitit launcher) stays light.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT_VARIABLE = "FREEENERGY_ROOT"  # conf/config.yaml: paths.root = ${oc.env:FREEENERGY_ROOT,.}
_NO_DESCRIPTION = "(no description)"


def repository_of(script: str | Path) -> Path:
    """The repository holding ``scripts/<name>.py`` (the script's folder's parent), as an absolute path."""
    return Path(script).resolve().parent.parent


def prepare_entry_point(script: str | Path, description: str | None) -> Path:
    """Call at the top of a script, before ``@hydra.main`` composes the config; returns the repository root.

    - Sets ``$FREEENERGY_ROOT`` to the repository holding ``script`` unless the user set it, so that the
      default ``paths.*`` and data folders of ``conf/config.yaml`` lie under the repository whatever the
      current directory. The processes a launcher starts (joblib workers, submitit and SLURM jobs) inherit
      the variable, so they resolve the same paths.
    - Registers the ``script_doc`` resolver, which ``--help`` (``conf/hydra/help/freeenergy.yaml``) prints:
      ``description``, normally the script's docstring.
    """
    root = repository_of(script)
    os.environ.setdefault(ROOT_VARIABLE, str(root))
    text = (description or _NO_DESCRIPTION).strip()
    # Hydra fills the help template with string.Template, for which '$' starts a placeholder.
    OmegaConf.register_new_resolver("script_doc", lambda: text.replace("$", "$$"), replace=True)
    return root
