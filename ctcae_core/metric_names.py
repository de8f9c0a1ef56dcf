"""How the numbers of an evaluation are named once they leave the library.

``evaluate.evaluate`` returns the keys of ``metrics.METRIC_KEYS`` (mse, ari_fg, ari_full,
inter_cluster, intra_cluster, phase_spread, ari_fg_colour), ``n_images`` and, for each object count k present,
``count_n<k>`` (images with k objects) and ``ari_fg_n<k>`` / ``ari_full_n<k>`` (their mean).
``train.fit`` reports those as ``val_<name>`` after each evaluation, beside its running
``loss``, ``mse`` and ``contrastive``. The search layer logs its test evaluation as
``test_<name>``, and ``search/evaluate.py`` as ``eval_<dataset>_<name>``.

One spelling for every per-object-count number: ``<prefix>_<metric>_n<k>``. A count that was
also evaluated on its own (``data.test_n_objects``, ``--n-objects``) adds every metric of that
evaluation under this spelling, replacing the k-object share of the whole split (the same images;
only the k-means seeding differs). Studies logged before this convention used
``<prefix>_n<k>_<metric>``; :func:`per_count_values` still reads that form.

Nothing here imports torch: the report reads these names without it.
"""
from __future__ import annotations

import math
import re
from functools import cache
from typing import Any, Mapping

TRAIN_LOSSES = ("loss", "mse", "contrastive")  # fit's running means over the steps since the last evaluation
BEST_METRIC = "val_ari_fg"  # higher is better; the paper's main metric: checkpoint_best.pt follows it

_PER_COUNT = re.compile(r".+_n\d+")


def per_count(name: str, k: int | str) -> str:
    """``<name>_n<k>``: ``name`` measured on the scenes with ``k`` objects."""
    return f"{name}_n{k}"


def per_count_values(row: Mapping[str, Any], prefix: str, metric: str) -> dict[int, float]:
    """Object count k -> the finite value of ``<prefix>_<metric>_n<k>`` in ``row`` (one run's metrics).

    Runs logged before the single spelling also hold ``<prefix>_n<k>_<metric>`` (k evaluated on
    its own) beside ``<prefix>_<metric>_n<k>`` (the k-object share of the whole split): the first wins.
    """
    new = re.compile(re.escape(f"{prefix}_{metric}_n") + r"(\d+)")
    old = re.compile(re.escape(f"{prefix}_n") + r"(\d+)" + re.escape(f"_{metric}"))
    found: dict[int, float] = {}
    older: dict[int, float] = {}
    for name, v in row.items():
        if not _number(v) or not math.isfinite(v):
            continue
        if m := new.fullmatch(name):
            found[int(m.group(1))] = float(v)
        elif m := old.fullmatch(name):
            older[int(m.group(1))] = float(v)
    return {**found, **older}


def flat_metrics(result: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """An ``evaluate_checkpoint`` result as flat metric names (its numbers, NaN included).

    ``<prefix>_<key>`` for the whole split; for each count k of ``result["by_n_objects"]`` (k
    evaluated on its own): ``<prefix>_<metric>_n<k>`` for its metrics and ``<prefix>_count_n<k>``
    for its number of images (0 when the split has no such scene).
    """
    out = {f"{prefix}_{k}": float(v) for k, v in result.items() if k != "step" and _number(v)}
    for k, block in (result.get("by_n_objects") or {}).items():
        for name, v in block.items():
            if name == "n_images":
                out[per_count(f"{prefix}_count", k)] = float(v)
            elif _number(v) and not _PER_COUNT.fullmatch(name):  # count_n<k>, ari_fg_n<k>: the block itself again
                out[per_count(f"{prefix}_{name}", k)] = float(v)
    return out


@cache
def reported_metric_pattern() -> re.Pattern[str]:
    """The names ``train.fit`` reports after each evaluation: what a study may optimise or schedule on."""
    from ctcae_core.metrics import PER_COUNT_KEYS, METRIC_KEYS  # torch: only when a study is validated

    alts = [*TRAIN_LOSSES, *(f"val_{k}" for k in METRIC_KEYS), *(per_count(f"val_{k}", r"\d+") for k in PER_COUNT_KEYS)]
    return re.compile("|".join(alts))


def reported_metrics_help() -> str:
    from ctcae_core.metrics import PER_COUNT_KEYS, METRIC_KEYS

    names = [f"val_{k}" for k in METRIC_KEYS] + [per_count(f"val_{k}", "<k>") for k in PER_COUNT_KEYS] + list(TRAIN_LOSSES)
    return ", ".join(names)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
