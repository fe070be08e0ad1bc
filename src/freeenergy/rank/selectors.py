"""Other checkpoint selectors beside F in the ranking (``rank.selectors``; issue 21).

The label-free ones read the ranking data (the pretraining images) through each checkpoint's own weights:
by default RankMe and α-ReQ (a forward pass each; ``laplace`` may be added). The label-using ones (LogME,
LEEP, NCE, k-NN) read labelled images of the downstream task, which the user names with
``rank.downstream_data=<ImageFolder root>``; ``rank.selectors=auto`` adds them exactly when it is given.
Their options are ``selectors.*`` (conf/selectors/default.yaml), their definitions and signs
docs/selectors.md. Everything a selector needs is checked before the SGLD starts (``from_config``, ``load``);
each candidate's values are kept in its record with the identity of their settings, so a rerun reuses them.
A selector that cannot be computed for a candidate gets a line and an empty cell, not a failed ranking.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy.stats import kendalltau
from tqdm import tqdm

from freeenergy.data.image_folder import load_image_folder
from freeenergy.metrics.common import balanced_subset
from freeenergy.rank.models import load_candidate
from freeenergy.rank.state import Prepared, finished
from freeenergy.records.identity import settings_digest
from freeenergy.records.kinds import recorded_number
from freeenergy.runtime import progress_bar
from freeenergy.selectors.catalog import LABEL_USING, SELECTORS, check_kinds
from freeenergy.selectors.config import OPTION_GROUPS, validate_selector_options
from freeenergy.selectors.measure import Images, SelectorData, measure_selectors

AUTO_LABEL_FREE = ("rankme", "alpha_req")  # cheap: one forward pass over the ranking data
SOURCE_HEAD = ("leep", "nce")  # read the checkpoint's own classifier


@dataclass
class RankSelectors:
    """The selectors a ranking reports beside F: ``from_config`` (before any work), ``load`` (the data, before
    the SGLD), ``add_to`` (compute what is missing, one column each)."""

    kinds: tuple[str, ...]
    downstream_data: str | None
    data: SelectorData | None = field(default=None, repr=False)
    identity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RankSelectors:
        """``rank.selectors`` (``auto`` or a list) and ``rank.downstream_data``; ``ValueError`` names a bad value."""
        requested, data = cfg.rank.get("selectors", "auto"), cfg.rank.get("downstream_data")
        if data is not None and (not isinstance(data, str) or not Path(data).is_dir()):
            raise ValueError(
                f"rank.downstream_data={data!r} is not a folder: give the ImageFolder root (<root>/<class>/<image>) "
                "of labelled images of the task you will fine-tune on, or leave it out."
            )
        if requested == "auto":
            kinds = [*AUTO_LABEL_FREE, *(LABEL_USING if data else ())]
        else:
            listed = OmegaConf.to_container(requested) if OmegaConf.is_list(requested) else requested
            kinds = check_kinds(listed, "rank.selectors")
        needs_labels = [kind for kind in kinds if kind in LABEL_USING]
        if needs_labels and data is None:
            raise ValueError(
                f"rank.selectors: {needs_labels} read labelled downstream images; give rank.downstream_data=<ImageFolder "
                "root> (labelled images of the task you will fine-tune on), or leave them out of rank.selectors."
            )
        if kinds:
            validate_selector_options(cfg.selectors)
        return cls(tuple(kinds), data)

    def load(self, state: Prepared) -> None:
        """The images the selectors read, and the identity of each selector's settings; ``ValueError`` when
        ``selectors.knn.k`` is not below the labelled images or LEEP/NCE meet a checkpoint without a head."""
        if not self.kinds:
            return
        headless = [c.name for c in state.candidates if c.num_classes == 0]
        if headless and any(kind in SOURCE_HEAD for kind in self.kinds):
            raise ValueError(
                f"rank.selectors: leep and nce read the checkpoints' own classifier, and {headless[:3]} have none; "
                "leave them out of rank.selectors."
            )
        s_cfg, split = state.cfg.selectors, state.data.split
        index = balanced_subset(split.labels.cpu(), s_cfg.upstream_images, s_cfg.seed).to(split.labels.device)
        downstream, digest = None, None
        if any(kind in LABEL_USING for kind in self.kinds):
            rank = state.cfg.rank
            images = load_image_folder(self.downstream_data, rank.image_size, rank.cache_dir, state.cfg.progress)
            if "knn" in self.kinds and s_cfg.knn.k >= len(images):
                raise ValueError(
                    f"selectors.knn.k={s_cfg.knn.k} is not below the {len(images)} images of rank.downstream_data; "
                    "lower it."
                )
            hasher = hashlib.sha1(images.images.numpy().tobytes())
            hasher.update(images.labels.numpy().tobytes())
            downstream = Images(images.images.to(state.device), images.labels.to(state.device))
            digest = hasher.hexdigest()
        upstream = Images(split.images[index], split.labels[index])
        self.data = SelectorData(split.transform, upstream, downstream, s_cfg.eval_batch_size)
        self.identity = {
            kind: settings_digest(
                dict(
                    **state.model_identity(),
                    selector=kind,
                    options=OmegaConf.to_container(s_cfg[kind], resolve=True) if kind in OPTION_GROUPS else {},
                    upstream={"images": s_cfg.upstream_images, "seed": s_cfg.seed},
                    downstream=digest if kind in LABEL_USING else None,
                )
            )
            for kind in self.kinds
        }

    def measure(self, state: Prepared) -> dict[str, dict[str, dict]]:
        """candidate name → kind → fields, computed for the candidates whose record lacks them (then saved)."""
        for candidate in progress_bar(
            state.candidates, progress=state.cfg.progress, desc="selectors", unit="checkpoint"
        ):
            done = state.records[candidate.name].setdefault("selectors", {})
            pending = [kind for kind in self.kinds if not finished(done.get(kind), self.identity[kind])]
            if not pending:
                continue
            model = load_candidate(candidate, state.spec, state.device)  # its own head (LEEP and NCE read it)
            failures: dict[str, str] = {}
            for kind, fields in measure_selectors(model, pending, self.data, state.cfg.selectors, failures).items():
                done[kind] = fields | {"identity": self.identity[kind]}
            for kind, message in failures.items():
                tqdm.write(f"{candidate.name}: {kind} not computed: {message}")
            state.save(candidate)
        return {c.name: state.records[c.name]["selectors"] for c in state.candidates}

    def add_to(self, state: Prepared, table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        """The ranking ``table`` with one column per selector (its ``value``), and lines for ranking.md."""
        if not self.kinds:
            return table, []
        values = self.measure(state)
        table = table.copy()
        for kind in self.kinds:
            table[kind] = [
                recorded_number(values.get(name, {}).get(kind, {}).get("value")) for name in table["checkpoint"]
            ]
        return table, self.describe(table, values)

    def describe(self, table: pd.DataFrame, values: dict[str, dict[str, dict]]) -> list[str]:
        """One line per selector for ranking.md: its sign, the checkpoint it puts first, its agreement with F."""
        lines = ["## Other selectors beside F", ""]
        for kind in self.kinds:
            info = SELECTORS[kind]
            score = table[kind] if info.higher_is_better else -table[kind]
            both = score.notna() & table["free_energy"].notna()
            tau = kendalltau(-table["free_energy"][both], score[both]).statistic if both.sum() >= 2 else math.nan
            first = table.loc[score.idxmax(), "checkpoint"] if score.notna().any() else "none"
            seconds = [recorded_number(v.get(kind, {}).get("wall_time_s")) for v in values.values()]
            lines.append(
                f"- `{kind}`: {info.value} ({info.source}; {'higher' if info.higher_is_better else 'lower'} predicts "
                f"better transfer; reads {'rank.downstream_data' if kind in LABEL_USING else 'the ranking data'}): "
                f"puts `{first}` first; Kendall τ with F's order {tau:.2f}; {_mean(seconds):.2g} s per checkpoint."
            )
        lines.append("")
        return lines


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
