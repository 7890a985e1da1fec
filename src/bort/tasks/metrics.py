"""The benchmarks' metrics, computed locally (the `evaluate` library needs the hub).

Definitions as GLUE/SuperGLUE score them: F1 is binary F1 of the positive class (index 1: MRPC
'equivalent', QQP 'duplicate'); macro_f1 is the unweighted mean of per-class F1 (CB); Matthews
correlation is over the binary predictions (CoLA); Pearson and Spearman are over the raw scores (STS-B).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions: Sequence, labels: Sequence) -> float:
    """Binary F1 with class index 1 as the positive class."""
    return float(skm.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    """Mean of the per-class F1 over the classes present in labels or predictions."""
    return float(skm.f1_score(labels, predictions, average="macro", zero_division=0))


def matthews_correlation(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation coefficient; 0 when either side is constant."""
    return float(skm.matthews_corrcoef(labels, predictions))


def _correlation(fn: Callable, predictions: Sequence, labels: Sequence) -> float:
    p, y = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0  # undefined for constant input; a constant predictor earns nothing
    return float(fn(p, y)[0])


def pearson(predictions: Sequence, labels: Sequence) -> float:
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: Sequence, labels: Sequence) -> float:
    return _correlation(stats.spearmanr, predictions, labels)


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_correlation": matthews_correlation,
    "pearson": pearson, "spearman": spearman}


def compute(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The named metrics of predictions against labels (class indices, choice indices or scores)."""
    return {name: METRICS[name](predictions, labels) for name in names}


def mean_std(runs: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (0 for one run) of each metric over runs."""
    keys = [k for k in runs[0] if all(isinstance(r.get(k), int | float) for r in runs)]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    std = {k: float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for k in keys}
    return mean, std
