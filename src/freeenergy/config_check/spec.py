"""What a config key may hold (``Spec``), the makers of specs, and the bounds the table shares."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from freeenergy.records.checkpoints import check_checkpoint_choice

MISSING = "???"  # OmegaConf's mark of a value the user must give


@dataclass(frozen=True)
class Spec:
    """What one config key may hold.

    ``kind``: ``int``, ``real`` (finite int or float), ``bool``, ``text`` (a non-empty string, matching
    ``pattern`` when given), ``choice`` (one of ``choices``), ``list`` (of ``item``, ``min_items`` to
    ``max_items`` long), ``custom`` (what ``check`` accepts, described by ``pattern_words``) or ``mapping`` (with ``fields``: exactly those keys, each valid; without: any mapping,
    its keys the user's, e.g. a model's constructor arguments). ``low``/``high`` bound an
    ``int`` or ``real`` (exclusive when ``low_open``/``high_open``); ``nullable`` admits null; ``words``
    admits these strings besides the kind (``auto``, ``all``, ``final``).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    pattern_words: str = ""  # the pattern, in words
    item: Spec | None = None
    fields: tuple[tuple[str, Spec], ...] = ()  # a mapping's keys, when fixed: exactly these, each valid
    min_items: int = 0
    max_items: int = 10_000
    nullable: bool = False
    words: tuple[str, ...] = ()
    hint: str = ""  # an example of the right form, appended to the message
    check: Callable[[Any], bool] | None = None  # kind ``custom``: the values it returns true for (``pattern_words``)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (a plain Python value, as ``OmegaConf.to_container`` gives) is allowed."""
        if value is None:
            return self.nullable
        if isinstance(value, str) and value in self.words:
            return True
        if self.kind == "int":
            return isinstance(value, int) and not isinstance(value, bool) and self._in_range(value)
        if self.kind == "real":
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            return number and math.isfinite(value) and self._in_range(value)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str) and bool(value.strip()) and value != MISSING and self._matches(value)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "list":
            sized = isinstance(value, list) and self.min_items <= len(value) <= self.max_items
            return sized and all(self.item.accepts(v) for v in value)
        if self.kind == "custom":
            return bool(self.check(value))
        if self.kind == "mapping":
            if not isinstance(value, Mapping):
                return False
            fields = dict(self.fields)
            return not fields or (set(value) == set(fields) and all(fields[k].accepts(v) for k, v in value.items()))
        raise ValueError(f"unknown spec kind {self.kind!r}")

    def _in_range(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def _matches(self, value: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None

    def allowed(self) -> str:
        """What the key may hold, in words, e.g. ``an integer in [1, 1048576]``."""
        if self.kind == "int":
            text = f"an integer in {self._range()}"
        elif self.kind == "real":
            text = f"a finite number {self._range()}".rstrip()
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "text":
            text = f"a non-empty string{' ' + self.pattern_words if self.pattern_words else ''}"
        elif self.kind == "choice":
            text = f"one of {list(self.choices)}"
        elif self.kind == "custom":
            text = self.pattern_words
        elif self.kind == "list":
            size = f"{self.min_items} to {self.max_items}" if self.min_items else f"at most {self.max_items}"
            text = f"a list of {size} items, each {self.item.allowed()}"
        elif self.fields:
            text = "a mapping {" + ", ".join(f"{key}: {spec.allowed()}" for key, spec in self.fields) + "}"
        else:
            text = "a mapping"
        extras = [repr(w) for w in self.words] + (["null"] if self.nullable else [])
        text += f", or {' or '.join(extras)}" if extras else ""
        return text + (f" ({self.hint})" if self.hint else "")

    def _range(self) -> str:
        low = f"{'>' if self.low_open else '>='} {_number(self.low)}" if self.low is not None else ""
        if self.high is None:
            return low
        return (
            f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"
        )


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value}"


# ---------------------------------------------------------------- spec makers and shared bounds


def integer(low: int, high: int, nullable: bool = False) -> Spec:
    return Spec("int", low=low, high=high, nullable=nullable)


def real(low: float | None = None, high: float | None = None, **options: Any) -> Spec:
    """A finite number; ``options``: ``low_open``, ``high_open``, ``nullable``, ``words``."""
    return Spec("real", low=low, high=high, **options)


def choice(*options: str) -> Spec:
    return Spec("choice", choices=options)


def text(pattern: str | None = None, pattern_words: str = "", nullable: bool = False) -> Spec:
    return Spec("text", pattern=pattern, pattern_words=pattern_words, nullable=nullable)


def items(item: Spec, min_items: int = 0, max_items: int = 10_000, words: tuple[str, ...] = (), hint: str = "") -> Spec:
    return Spec("list", item=item, min_items=min_items, max_items=max_items, words=words, hint=hint)


FLAG = Spec("bool")
POSITIVE = real(0, low_open=True)
NON_NEGATIVE = real(0)
FRACTION = real(0, 1, low_open=True, high_open=True)  # a share strictly between 0 and 1
MOMENTUM = real(0, 1, high_open=True)
SEED = integer(0, 2**32 - 1)  # numpy's seed range; torch's is wider
BATCH = integer(1, 2**20)
EPOCHS = integer(1, 100_000)
ITERATIONS = integer(1, 100_000)
SGLD_STEPS = 1_000_000  # burn-in or draws per chain (the paper's sources: ≤ 3,000)
IMAGES = integer(1, 10**7, nullable=True)  # a subset size; null: all
PER_CLASS = integer(2, 100_000, nullable=True)
IMAGE_SIZE = integer(4, 1024)
PADDING = integer(0, 512)
MAX_SHARDS = 100_000
PATH = text()
FOLDER_NAME = text(r"(?!\.)[^/\\\x00]*[^/\\\x00\s]", "(a folder name: no '/', not starting with '.')")
DEVICE = text(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", "(auto, cpu, cuda, cuda:<index>, mps or xpu)")


def _is_selection(value: Any) -> bool:
    try:
        check_checkpoint_choice(value)
    except ValueError:
        return False
    return True


def _is_selector_table(value: Any) -> bool:
    """``analysis.selectors``: summary column → {direction: 1 or -1, kind: text, cost: a seconds column (optional)}."""
    entry_ok = lambda e: (  # noqa: E731
        isinstance(e, Mapping)
        and set(e) <= {"direction", "kind", "cost"}
        and e.get("direction") in (1, -1)
        and isinstance(e.get("direction"), int)
        and isinstance(e.get("kind"), str)
        and (e.get("cost") is None or isinstance(e.get("cost"), str))
    )
    return isinstance(value, Mapping) and all(isinstance(k, str) and entry_ok(e) for k, e in value.items())


CHECKPOINT_SELECTION = Spec(
    "custom",
    check=_is_selection,
    pattern_words="'all', 'final', a list of epochs (e.g. [40, 48]), {epochs: final, seeds: [0]}, or a list of "
    "those (their union)",
)
SELECTOR_TABLE = Spec(
    "custom",
    check=_is_selector_table,
    pattern_words="a mapping of summary column → {direction: 1 or -1, kind: <text>, cost: <a seconds column>}",
)
RANGE = lambda item: items(item, 2, 2, hint="[low, high]")  # noqa: E731
SELECTOR_KINDS = ("rankme", "alpha_req", "laplace", "logme", "leep", "nce", "knn")  # selectors.catalog.SELECTORS
MODELS = ("resnet_narrow", "resnet18_cifar", "vgg16_bn")  # freeenergy.models.MODELS (a test keeps them equal)
DATASETS = ("synthetic", "cifar_fs", "mini_imagenet")  # freeenergy.data.DATASETS (likewise)
