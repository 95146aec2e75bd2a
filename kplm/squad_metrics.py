"""SQuAD v1.1 exact match and F1, as the official ``evaluate-v1.1.py`` computes them (pure Python).

Answers are normalised (lowercase, punctuation removed, the articles a/an/the removed, whitespace
collapsed) before comparing; each prediction scores the maximum over its gold answers, and the
totals are percentages over all questions. A question without gold answers (SQuAD v2's
unanswerable, read with ``squad``'s ``require_answers: false``) scores as the official
``evaluate-v2.0.py`` scores it: 100 for an empty prediction, else 0.

Example:
>>> squad_scores(["The Broncos!"], [["Denver Broncos", "Broncos"]])
{'exact_match': 100.0, 'f1': 100.0}
>>> squad_scores(["Denver", ""], [[], []])  # two unanswerable questions
{'exact_match': 50.0, 'f1': 50.0}
"""
import collections
import re
import string

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text):
    """Lowercase, drop punctuation and articles, collapse whitespace (the official recipe)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1_score(prediction, ground_truth):
    """Token-level F1 between the normalised prediction and one gold answer."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction, ground_truth):
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    """The best score of ``prediction`` against any of the gold answers."""
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def squad_scores(predictions, gold_answers):
    """``{"exact_match", "f1"}`` in percent: one predicted string and a list of golds each."""
    if len(predictions) != len(gold_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(gold_answers)} questions")
    exact = f1 = 0.0
    for prediction, golds in zip(predictions, gold_answers):
        if not len(golds):  # unanswerable: only "no answer" is right
            exact += float(not normalize_answer(prediction))
            f1 += float(not normalize_answer(prediction))
            continue
        exact += metric_max_over_ground_truths(exact_match_score, prediction, golds)
        f1 += metric_max_over_ground_truths(f1_score, prediction, golds)
    total = max(len(predictions), 1)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
