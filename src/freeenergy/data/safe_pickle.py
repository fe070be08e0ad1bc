"""Read dataset pickles without running code: numpy arrays, dtypes and plain containers only.

A pickle is a program: loading one with :func:`pickle.load` can call any importable function (a
``__reduce__`` returning ``os.system`` runs a shell command). The few-shot datasets circulate as pickles
written by other people's scripts, some by Python 2, so they are read here through an unpickler whose
``find_class`` admits only what numpy arrays need (``_reconstruct``, ``ndarray``, ``dtype``, scalars,
``_frombuffer``) plus ``_codecs.encode`` (how Python 3 writes ``bytes`` at protocol 2) and a few plain
containers; anything else is refused before it is called.

What an allowed callable may allocate is bounded by the file's own size (:class:`_Budget`): numpy's pickles
rebuild an array from bytes the file carries, so an array, ``bytearray`` or scalar larger than the file is a
bomb (a 33-byte pickle calling ``bytearray(1610612736)``) and is refused before it is allocated; an array's
state is checked against its shape before numpy sees it (numpy crashes on an object array whose list is
shorter than its shape). After loading, containers nested deeper than :data:`MAX_DEPTH` are refused with
the file named (walked with a stack, never by recursion), and shared sub-containers are visited once.

Python 2 pickles store text and array buffers as byte strings. ``encoding='latin1'`` (numpy's documented
way to read them) turns them into ``str`` that numpy turns back into the same bytes, and dictionary keys
into ``str``; keys that arrive as ``bytes`` (a pickle re-written after an ``encoding='bytes'`` load) are
decoded too, so callers always see ``str`` keys.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than numpy arrays and plain containers; nothing was called."""


class UnreadablePickleError(pickle.UnpicklingError):
    """A file that is not a complete pickle (truncated, empty, or another kind of file)."""


class PickleBombError(pickle.UnpicklingError):
    """A pickle that would allocate far more than it holds, or nests deeper than any dataset does."""


MAX_DEPTH = 100  # dataset pickles nest a few levels (a dict of arrays, lists and dicts)
BUDGET_SLACK = 1 << 20  # bytes an allocation may exceed the file's size by (headers, small objects)


class _Budget:
    """The most bytes one allowed call may allocate while a file of ``file_size`` bytes is read."""

    limit = BUDGET_SLACK

    @classmethod
    def check(cls, nbytes: int, what: str) -> None:
        if nbytes > cls.limit:
            raise PickleBombError(f"{what} of {nbytes:,} bytes, more than the whole file holds")


def _numpy_callables() -> dict[str, Any]:
    """The functions numpy's own pickles name (numpy 1.x and 2.x): ``_reconstruct``, ``scalar``, ``_frombuffer``."""
    return {
        "_reconstruct": np.ndarray((0,)).__reduce__()[0],
        "scalar": np.float64(0).__reduce__()[0],
        "_frombuffer": np.zeros(1).__reduce_ex__(5)[0],
    }


_NUMPY = _numpy_callables()


class _ArrayType:
    """What the global ``numpy.ndarray`` resolves to: an argument of ``_reconstruct``, never a call of its own
    (``ndarray((10**9,))`` would allocate; numpy's pickles never call it)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError("it calls numpy.ndarray directly (numpy's own pickles never do)")


ARRAY_TYPE = _ArrayType()


def _nbytes(shape: Any, dtype: Any) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickleError(f"it gives an array the shape {shape!r}, not a tuple of sizes")
    return math.prod(shape) * np.dtype(dtype).itemsize


class _CheckedArray(np.ndarray):
    """An array being unpickled: its state (shape, dtype, data) is checked before numpy's ``__setstate__`` runs."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("it gives an array a state that is not (version, shape, dtype, fortran, data)")
        shape, dtype, data = state[-4], state[-3], state[-1]
        if not isinstance(dtype, np.dtype):
            raise UnsafePickleError(f"it gives an array the dtype {type(dtype).__name__}")
        nbytes = _nbytes(shape, dtype)
        _Budget.check(nbytes, "an array")
        count = math.prod(shape)
        if dtype.hasobject:
            if not isinstance(data, list) or len(data) != count:
                raise UnsafePickleError(f"it gives an object array of {count} items data that is not a list of as many")
        elif not isinstance(data, (bytes, str, bytearray)) or len(data) != nbytes:
            held = len(data) if isinstance(data, (bytes, str, bytearray)) else type(data).__name__
            raise UnsafePickleError(f"it gives an array of {nbytes} bytes data of {held}")
        super().__setstate__(state)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not ARRAY_TYPE:
        raise UnsafePickleError(f"it rebuilds {subtype!r} as an array")
    _Budget.check(_nbytes(shape, np.uint8 if isinstance(dtype, (bytes, str)) else dtype), "an array")
    return _NUMPY["_reconstruct"](_CheckedArray, shape, dtype)


def _scalar(dtype: Any, *data: Any) -> Any:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"it makes a numpy scalar of {type(dtype).__name__}")
    _Budget.check(dtype.itemsize, "a numpy scalar")
    return _NUMPY["scalar"](dtype, *data)


def _bytearray(*args: Any) -> bytearray:
    if args and isinstance(args[0], int):
        _Budget.check(args[0], "a bytearray")
    return bytearray(*args)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to turning text into bytes (what protocol-2 ``bytes`` need)."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise UnsafePickleError(f"it calls _codecs.encode with {type(text).__name__}, {type(encoding).__name__}")
    return text.encode(encoding)


ALLOWED: dict[tuple[str, str], Any] = {
    **{(f"{package}.multiarray", "_reconstruct"): _reconstruct for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.multiarray", "scalar"): _scalar for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _NUMPY["_frombuffer"] for package in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): ARRAY_TYPE,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{
        (module, name): kind
        for module in ("builtins", "__builtin__")
        for name, kind in (("set", set), ("frozenset", frozenset), ("bytearray", _bytearray))
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"it asks for {module}.{name}, which is not a numpy array, dtype or plain container"
            ) from None


CONTAINERS = (dict, list, tuple, set, frozenset)


def _plain(value: Any) -> Any:
    """``value`` with ``_CheckedArray`` as plain ``np.ndarray`` and ``bytes`` dict keys (Python 2 ``str``) as ``str``.

    Walked with an explicit stack; a container reached twice (shared in the pickle) is converted once; nesting
    deeper than ``MAX_DEPTH`` raises ``PickleBombError``.
    """
    done: dict[int, Any] = {}
    keep: list[Any] = []  # the originals, so that their ids stay unique while ``done`` refers to them
    stack = [(value, 0, False)]
    while stack:
        item, depth, children_done = stack.pop()
        if not isinstance(item, CONTAINERS) or id(item) in done and not children_done:
            continue
        if depth > MAX_DEPTH:
            raise PickleBombError(f"containers nested deeper than {MAX_DEPTH} levels")
        children = list(item.items()) if isinstance(item, dict) else list(item)
        parts = [part for pair in children for part in (pair if isinstance(item, dict) else (pair,))]
        if not children_done:
            done[id(item)] = None
            keep.append(item)
            stack.append((item, depth, True))
            stack.extend((part, depth + 1, False) for part in parts if isinstance(part, CONTAINERS))
            continue
        if any(isinstance(part, CONTAINERS) and done[id(part)] is None for part in parts):
            raise UnsafePickleError("it builds a container that holds itself")
        convert = lambda part: done[id(part)] if isinstance(part, CONTAINERS) else _leaf(part)
        if isinstance(item, dict):
            done[id(item)] = {_key(convert(k)): convert(v) for k, v in children}
        else:
            done[id(item)] = type(item)(convert(part) for part in children)
    return done[id(value)] if isinstance(value, CONTAINERS) else _leaf(value)


def _leaf(value: Any) -> Any:
    return value.view(np.ndarray) if isinstance(value, _CheckedArray) else value


def _key(key: Any) -> Any:
    return key.decode("latin1") if isinstance(key, bytes) else key


def load_pickle(path: str | Path) -> Any:
    """The object in the pickle at ``path``, read without running code (Python 2 or 3 pickles).

    Raises:
        UnsafePickleError: the pickle names a callable other than numpy's array machinery and plain
            containers (e.g. ``os.system``), or calls an allowed one in a way numpy's pickles never do;
            nothing it names is called.
        PickleBombError: an allocation larger than the file, or containers nested deeper than ``MAX_DEPTH``.
        UnreadablePickleError: the file is empty, truncated or not a pickle.
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            _Budget.limit = os.fstat(handle.fileno()).st_size + BUDGET_SLACK
            value = _plain(_RestrictedUnpickler(handle, encoding="latin1").load())
    except UnsafePickleError as error:
        raise UnsafePickleError(
            f"refused to load {path}: {error}. Pickles can run code, and dataset pickles never need this; do not "
            "load this file, and fetch the dataset again from a source you trust."
        ) from None
    except PickleBombError as error:
        raise PickleBombError(
            f"refused to load {path}: it asks for {error} ({path.stat().st_size:,} bytes on disk). No dataset "
            "pickle does this; the file is damaged or hostile: fetch the dataset again from a source you trust."
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        UnicodeDecodeError,
        MemoryError,
        RecursionError,
    ) as error:
        raise UnreadablePickleError(
            f"{path} is not a complete pickle ({type(error).__name__}: {error}); it may be truncated "
            "(an interrupted copy or download). Copy or download it again."
        ) from error
    finally:
        _Budget.limit = BUDGET_SLACK
    return value
