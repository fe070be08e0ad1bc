"""Read dataset pickles without running code: numpy arrays, dtypes and plain containers only.

A pickle is a program: loading one with :func:`pickle.load` can call any importable function (a
``__reduce__`` returning ``os.system`` runs a shell command). The few-shot datasets circulate as pickles
written by other people's scripts, some by Python 2, so they are read here through an unpickler whose
``find_class`` admits only what numpy arrays need (``_reconstruct``, ``ndarray``, ``dtype``, scalars,
``_frombuffer``) plus ``_codecs.encode`` (how Python 3 writes ``bytes`` at protocol 2) and a few plain
containers; anything else is refused before it is called.

Python 2 pickles store text and array buffers as byte strings. ``encoding='latin1'`` (numpy's documented
way to read them) turns them into ``str`` that numpy turns back into the same bytes, and dictionary keys
into ``str``; keys that arrive as ``bytes`` (a pickle re-written after an ``encoding='bytes'`` load) are
decoded too, so callers always see ``str`` keys.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than numpy arrays and plain containers; nothing was called."""


class UnreadablePickleError(pickle.UnpicklingError):
    """A file that is not a complete pickle (truncated, empty, or another kind of file)."""


def _numpy_callables() -> dict[tuple[str, str], Any]:
    """The functions numpy's own pickles name, under the module names numpy 1.x and 2.x write."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to turning text into bytes (what protocol-2 ``bytes`` need)."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise UnsafePickleError(f"_codecs.encode called with {type(text).__name__}, {type(encoding).__name__}")
    return text.encode(encoding)


ALLOWED: dict[tuple[str, str], Any] = {
    **_numpy_callables(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(module, name): kind for module in ("builtins", "__builtin__")
       for name, kind in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray))},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None


def _str_keys(value: Any) -> Any:
    """Dictionaries with ``bytes`` keys (Python 2 ``str``) get ``str`` keys, recursively."""
    if isinstance(value, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _str_keys(v) for k, v in value.items()}
    return value


def load_pickle(path: str | Path) -> Any:
    """The object in the pickle at ``path``, read without running code (Python 2 or 3 pickles).

    Raises:
        UnsafePickleError: the pickle names a callable other than numpy's array machinery and plain
            containers (e.g. ``os.system``); nothing it names is called.
        UnreadablePickleError: the file is empty, truncated or not a pickle.
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            value = _RestrictedUnpickler(handle, encoding="latin1").load()
    except UnsafePickleError as error:
        raise UnsafePickleError(
            f"refused to load {path}: it asks for {error}, which is not a numpy array, dtype or plain container. "
            "Pickles can run code, and dataset pickles never need this; do not load this file, and fetch the "
            "dataset again from a source you trust.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError, MemoryError) as error:
        raise UnreadablePickleError(
            f"{path} is not a complete pickle ({type(error).__name__}: {error}); it may be truncated "
            "(an interrupted copy or download). Copy or download it again.") from error
    return _str_keys(value)
