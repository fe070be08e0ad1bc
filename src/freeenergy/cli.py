"""What every script does before Hydra starts: anchor default paths at the repository, describe itself in --help.

Torch-free, so that a launcher's submitting process (Hydra's joblib or submitit launcher) stays light.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT_VARIABLE = "FREEENERGY_ROOT"
DEBUG_VARIABLE = "HYDRA_FULL_ERROR"  # =1: a user error shows its whole traceback (Hydra's own switch)
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # the shell's status for Ctrl-C  # conf/config.yaml: paths.root = ${oc.env:FREEENERGY_ROOT,.}
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


def user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a script's Hydra task function so that a user error prints one line and exits with status 2.

    A user error is what the project raises for a bad value, file or folder: ``ValueError`` (config values,
    records, checkpoints, whose messages name the key or file, the value and the fix), ``FileNotFoundError``
    and ``PermissionError``. The traceback is shown only with ``HYDRA_FULL_ERROR=1``. Ctrl-C prints one line and
    exits with status 130; anything else (a bug) keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError, PermissionError) as error:
            if os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            print(f"error: {one_line(error)}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)
        except KeyboardInterrupt:
            print("interrupted: finished records are kept; run the same command again to continue", file=sys.stderr)
            sys.exit(INTERRUPTED_STATUS)

    return wrapper


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (whitespace runs collapsed)."""
    return " ".join(str(error).split()) or type(error).__name__
