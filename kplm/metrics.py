"""Task metrics computed exactly over a whole evaluation set (NumPy, no TensorFlow).

Example:
>>> classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], num_classes=2)["accuracy"]
0.75
"""
import numpy as np


def confusion_matrix(labels, predictions, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def classification_metrics(labels, predictions, num_classes):
    """Accuracy, macro-F1 (mean of per-class F1, classes absent from both count as 0 and are
    left out) and Matthews correlation (multi-class R_K of Gorodkin 2004, as scikit-learn)."""
    c = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    total = c.sum()
    accuracy = float(np.trace(c) / total) if total else 0.0
    tp = np.diag(c)
    predicted, actual = c.sum(axis=0), c.sum(axis=1)
    present = (predicted + actual) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(present, 2 * tp / (predicted + actual), 0.0)
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    cov_ytyp = np.trace(c) * total - predicted @ actual
    cov_ypyp = total ** 2 - predicted @ predicted
    cov_ytyt = total ** 2 - actual @ actual
    denominator = np.sqrt(cov_ytyt * cov_ypyp)
    mcc = float(cov_ytyp / denominator) if denominator else 0.0
    return {"accuracy": accuracy, "macro_f1": macro_f1, "matthews_correlation": mcc}


def _ranks(values):
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator else 0.0


def regression_metrics(gold, predicted):
    """Pearson and Spearman correlation (ties averaged) and mean squared error.

    Example:
    >>> regression_metrics([1, 2, 3], [2, 4, 7])["spearman"]
    1.0
    """
    gold, predicted = np.asarray(gold, np.float64), np.asarray(predicted, np.float64)
    return {"pearson": pearson(gold, predicted),
            "spearman": pearson(_ranks(gold), _ranks(predicted)),
            "mse": float(np.mean((gold - predicted) ** 2))}
