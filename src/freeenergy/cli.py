"""What every script does before and around its work: default paths under the repository, its --help text,
a checked config, one-line user errors and interruptions.

Torch-free, so that a launcher's submitting process (Hydra's joblib or submitit launcher) stays light.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT_VARIABLE = "FREEENERGY_ROOT"  # conf/config.yaml: paths.root = ${oc.env:FREEENERGY_ROOT,.}
DEBUG_VARIABLE = "HYDRA_FULL_ERROR"  # =1: a user error shows its whole traceback (Hydra's own switch)
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # the shell's status for Ctrl-C
INTERRUPTED_MESSAGE = "interrupted: finished records are kept; run the same command again to continue"
# Errors of the file system that the user fixes (not bugs): a read-only folder, a full disk, a file-size limit.
USER_OS_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM}
# For the commands that only read runs/ (figures, plan, rank, calibration): Hydra writes no folder, no log file
# (its log goes to the console), so that they run on a read-only runs/ or results/ folder.
NO_OUTPUT_FOLDER = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stdout")
NO_LOG = ("hydra/job_logging=disabled", "hydra/hydra_logging=disabled")  # and nothing on the console either
_NO_DESCRIPTION = "(no description)"


def repository_of(script: str | Path) -> Path:
    """The repository holding ``scripts/<name>.py`` (the script's folder's parent), as an absolute path."""
    return Path(script).resolve().parent.parent


def prepare_entry_point(
    script: str | Path, description: str | None, output_folder: bool = True, log: bool = True
) -> Path:
    """Call at the top of a script, before ``@hydra.main`` composes the config; returns the repository root.

    - Sets ``$FREEENERGY_ROOT`` to the repository holding ``script`` unless the user set it to a folder (unset
      or empty: an empty root would put runs/, results/ and figures/ at the file-system root), so that the
      default ``paths.*`` and data folders of ``conf/config.yaml`` lie under the repository whatever the
      current directory. The processes a launcher starts (joblib workers, submitit and SLURM jobs) inherit
      the variable, so they resolve the same paths.
    - Registers the ``script_doc`` resolver, which ``--help`` (``conf/hydra/help/freeenergy.yaml``) prints
      (``description``, normally the script's docstring), and ``pid``, which makes Hydra's output folder of
      each process its own (two jobs started in the same second keep both their ``overrides.yaml``).
    - ``output_folder=False`` (commands that only read ``runs/``): Hydra writes no output folder and no log file;
      its log goes to the console, or nowhere with ``log=False`` (a command whose output a shell parses).
    - Ctrl-C anywhere in the process prints one line instead of a traceback (``HYDRA_FULL_ERROR=1`` keeps it).
    """
    root = repository_of(script)
    if not os.environ.get(ROOT_VARIABLE, "").strip():
        os.environ[ROOT_VARIABLE] = str(root)
    text = (description or _NO_DESCRIPTION).strip()
    # Hydra fills the help template with string.Template, for which '$' starts a placeholder.
    OmegaConf.register_new_resolver("script_doc", lambda: text.replace("$", "$$"), replace=True)
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
    if not output_folder:  # first on the command line, so that the user's own hydra.* overrides still win
        sys.argv[1:1] = [*NO_OUTPUT_FOLDER, *([] if log else NO_LOG)]
    sys.excepthook = _interruptions_in_one_line(sys.excepthook)
    return root


def _interruptions_in_one_line(previous: Callable[..., Any]) -> Callable[..., Any]:
    """An ``excepthook`` that prints Ctrl-C (outside the task function: imports, a launcher) as one line.

    Python still ends the process as killed by SIGINT, so the shell sees status 130."""

    def hook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if issubclass(kind, KeyboardInterrupt) and os.environ.get(DEBUG_VARIABLE) != "1":
            print(INTERRUPTED_MESSAGE, file=sys.stderr)
            return
        previous(kind, value, traceback)

    return hook


def is_user_error(error: BaseException) -> bool:
    """A bad value, file or folder the user fixes: ``ValueError`` (config values, records, checkpoints, whose
    messages name the key or file, the value and the fix), ``FileNotFoundError``, ``PermissionError``, and the
    file system's read-only folder, full disk and file-size limit (``USER_OS_ERRORS``)."""
    if isinstance(error, (ValueError, FileNotFoundError, PermissionError)):
        return True
    return isinstance(error, OSError) and error.errno in USER_OS_ERRORS


def user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a script's Hydra task function so that a user error prints one line and exits with status 2.

    A user error is what ``is_user_error`` says. The traceback is shown only with ``HYDRA_FULL_ERROR=1``.
    Ctrl-C prints one line (in the launching process only, for a parallel multirun) and exits with status 130;
    anything else (a bug) keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            if os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            if not parallel_job():  # the jobs of a parallel multirun leave the one line to the launching process
                print(INTERRUPTED_MESSAGE, file=sys.stderr)
            sys.exit(INTERRUPTED_STATUS)
        except Exception as error:
            if not is_user_error(error) or os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            print(f"error: {one_line(error)}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)

    return wrapper


def checked_config(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a script's Hydra task function: check every key of its config first (``config_check``: type,
    finiteness, range; a ``ValueError`` naming each bad key, before any folder or record is written), and show
    progress bars only when ``progress`` is true and the process is not one of several running at once (the
    jobs of a parallel multirun print one line per finished checkpoint instead of interleaved bars)."""

    @functools.wraps(main)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        from freeenergy.config_check import check_config
        from freeenergy.runtime import set_progress

        check_config(cfg)
        set_progress(bool(cfg.get("progress", True)) and not parallel_job())
        return main(cfg, *args, **kwargs)

    return wrapper


def parallel_job() -> bool:
    """Whether this process is a job of a Hydra multirun through a launcher that runs jobs side by side
    (joblib, submitit, SLURM: any but the basic, sequential one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.runtime.choices.get("hydra/launcher") != "basic"


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (whitespace runs collapsed)."""
    return " ".join(str(error).split()) or type(error).__name__
