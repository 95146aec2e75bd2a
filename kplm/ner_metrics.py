"""Entity-level scores of tag sequences, exactly as ``conlleval`` (and ``seqeval``'s default,
non-strict mode) compute them for IOB2 tags. Pure Python, no TensorFlow.

An entity is a maximal run of tokens of one type that starts at ``B-TYPE``, or at ``I-TYPE``
after ``O`` or after a token of another type (an ``I-`` without a ``B-`` still starts an entity,
as in conlleval), and goes on over the following ``I-TYPE`` tokens. Any tag other than ``B-*`` /
``I-*`` counts as ``O``. A predicted entity is correct when its span and type both match a gold
one.

Example:
>>> extract_entities(["B-PER", "I-PER", "O", "I-LOC"])
[('PER', 0, 2), ('LOC', 3, 4)]
>>> entity_scores([["B-PER", "O"]], [["B-PER", "O"]])["f1"]
1.0
"""


def _split(tag):
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
        return tag[0], tag[2:]
    return "O", ""


def is_entity_tag(tag):
    """Whether ``tag`` is an IOB2 entity tag (``B-TYPE`` / ``I-TYPE``); conlleval reads any
    other tag as ``O``."""
    return _split(tag)[0] != "O"


def extract_entities(tags):
    """``[(type, start, end)]`` of the entities in one tag sequence (``end`` exclusive)."""
    entities = []
    current = None  # [type, start]
    for i, tag in enumerate(tags):
        prefix, kind = _split(tag)
        if current is not None and (prefix != "I" or kind != current[0]):
            entities.append((current[0], current[1], i))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = [kind, i]
    if current is not None:
        entities.append((current[0], current[1], len(tags)))
    return entities


def _prf(correct, found, expected):
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(gold_sequences, predicted_sequences):
    """Micro precision / recall / F1 over all entities, per-type scores, and token accuracy.

    Returns ``{"precision", "recall", "f1", "accuracy", "entities", "predicted_entities",
    "per_type": {type: {"precision", "recall", "f1", "support"}}}``.
    """
    if len(gold_sequences) != len(predicted_sequences):
        raise ValueError(f"{len(gold_sequences)} gold sequences, "
                         f"{len(predicted_sequences)} predicted")
    gold_all, pred_all, tokens, same = set(), set(), 0, 0
    for n, (gold, pred) in enumerate(zip(gold_sequences, predicted_sequences)):
        gold, pred = list(gold), list(pred)
        if len(gold) != len(pred):
            raise ValueError(f"sequence {n}: {len(gold)} gold tags, {len(pred)} predicted")
        gold_all.update((n, *e) for e in extract_entities(gold))
        pred_all.update((n, *e) for e in extract_entities(pred))
        tokens += len(gold)
        same += sum(g == p for g, p in zip(gold, pred))
    correct = gold_all & pred_all
    precision, recall, f1 = _prf(len(correct), len(pred_all), len(gold_all))
    per_type = {}
    for kind in sorted({e[1] for e in gold_all | pred_all}):
        c = sum(e[1] == kind for e in correct)
        found = sum(e[1] == kind for e in pred_all)
        expected = sum(e[1] == kind for e in gold_all)
        p, r, f = _prf(c, found, expected)
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": expected}
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": same / tokens if tokens else 0.0,
            "entities": len(gold_all), "predicted_entities": len(pred_all), "per_type": per_type}
