"""Noise statistics of T5 span corruption, BART text infilling and sentence permutation, measured
over many rows (no model)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kplm.objectives.noising import (permute_sentences, span_corruption,
                                     span_corruption_lengths, span_corruption_raw_length,
                                     text_infilling)

SENTINELS = list(range(10_000_000, 10_000_100))  # above every row token
SENTINEL_SET = set(SENTINELS)
END, MASK = 1, 4


def distinct_rows(batch, length):
    """Rows whose tokens are all distinct (so any rearrangement is visible)."""
    return tf.reshape(tf.range(100, 100 + batch * length, dtype=tf.int32), [batch, length])


def test_lengths_follow_t5():
    # T5's random_spans_helper: inputs of 512 come from 568 raw tokens, targets are 114.
    assert span_corruption_raw_length(512) == (568, 114)
    assert span_corruption_lengths(568) == (85, 28, 512, 114)
    for inputs_length in (16, 33, 64, 128, 200):
        raw, targets = span_corruption_raw_length(inputs_length, 0.15, 3.0)
        assert span_corruption_lengths(raw)[2] <= inputs_length  # fits
        assert span_corruption_lengths(raw + 1)[2] > inputs_length  # and is the longest that does
        assert span_corruption_lengths(raw)[3] == targets


@pytest.fixture(scope="module")
def corrupted():
    rows = distinct_rows(1000, 150)
    out = span_corruption(rows, tf.constant([3, 7]), sentinel_ids=SENTINELS, end_id=END,
                          noise_density=0.15, mean_noise_span_length=3.0)
    return rows.numpy(), {k: v.numpy() for k, v in out.items()}


def split_on_sentinels(row):
    """{sentinel: tokens after it up to the next sentinel or the end token}, and their order."""
    spans, order, current = {}, [], None
    for token in row:
        if token in SENTINEL_SET or token == END:
            current = token
            if token != END:
                order.append(token)
                spans[token] = []
        elif current is not None:
            spans[current].append(token)
    return spans, order


def test_span_corruption_inputs_and_targets_reconstruct_the_original(corrupted):
    rows, out = corrupted
    _, num_spans, inputs_length, targets_length = span_corruption_lengths(150)
    assert out["inputs"].shape == (1000, inputs_length)
    assert out["targets"].shape == (1000, targets_length)
    assert (out["inputs"][:, -1] == END).all() and (out["targets"][:, -1] == END).all()
    for row, inputs, targets in zip(rows, out["inputs"], out["targets"]):
        spans, order = split_on_sentinels(targets)
        # Numbered in order, the same sentinels on both sides.
        assert order == SENTINELS[:num_spans]
        assert [t for t in inputs if t in SENTINEL_SET] == order
        rebuilt = []
        for token in inputs[:-1]:
            rebuilt.extend(spans[token] if token in spans else [token])
        assert rebuilt == row.tolist()


def test_span_corruption_noise_statistics(corrupted):
    rows, out = corrupted
    noise = out["noise_mask"]
    # Measured density: configured 0.15; rounding a row of 150 gives 22 tokens (0.1467).
    density = noise.mean()
    assert density == pytest.approx(0.15, abs=1 / 150), density
    # Span lengths: runs of noise tokens; mean 3 configured (22 tokens / 7 spans = 3.14).
    lengths = []
    for row in noise:
        edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
        lengths.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    lengths = np.array(lengths)
    assert lengths.mean() == pytest.approx(3.0, abs=0.2), lengths.mean()
    assert lengths.std() > 1.0 and lengths.max() >= 8  # random lengths, not all 3
    # T5's layout: kept tokens first, a noise span last; in between, noise is uniform.
    assert not noise[:, 0].any() and noise[:, -1].all()
    first, second = noise[:, 20:75].mean(), noise[:, 75:130].mean()
    assert abs(first - second) < 0.015, (first, second)


def test_span_corruption_is_a_function_of_the_seed():
    rows = distinct_rows(4, 64)
    a = span_corruption(rows, tf.constant([0, 1]), sentinel_ids=SENTINELS, end_id=END)
    b = span_corruption(rows, tf.constant([0, 1]), sentinel_ids=SENTINELS, end_id=END)
    c = span_corruption(rows, tf.constant([0, 2]), sentinel_ids=SENTINELS, end_id=END)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], c["inputs"])
    with pytest.raises(ValueError, match="sentinels"):
        span_corruption(rows, tf.constant([0, 1]), sentinel_ids=SENTINELS[:2], end_id=END)


def test_text_infilling_statistics():
    rows = distinct_rows(2000, 64)
    out = text_infilling(rows, tf.constant([5, 9]), mask_id=MASK, mask_rate=0.3,
                         poisson_lambda=3.0)
    noise, lengths = out["noise_mask"].numpy(), out["span_lengths"].numpy()
    used = out["span_used"].numpy()
    # Exactly ceil(0.3 * 64) = 20 tokens masked in every row (spans never overlap).
    assert (noise.sum(axis=1) == 20).all()
    # Span lengths ~ Poisson(3): the first draw of each row is never cut, so its mean and
    # variance both estimate lambda (standard error of the mean: 0.04).
    first = lengths[:, 0]
    assert first.mean() == pytest.approx(3.0, abs=0.15), first.mean()
    assert first.var() == pytest.approx(3.0, abs=0.5), first.var()
    # Noise is spread over the row.
    assert abs(noise[:, :32].mean() - noise[:, 32:].mean()) < 0.03
    zero_spans, masks_seen = 0, 0
    for row, ids, mask, draws, use in zip(rows.numpy(), out["token_ids"].numpy(), noise,
                                          lengths, used):
        # One <mask> per span, a 0-length span included (an insertion) ...
        masks = int((ids == MASK).sum())
        assert masks == use.sum()
        zero_spans += int(((draws == 0) & use).sum())
        masks_seen += masks
        # ... and the other tokens are the unmasked ones, in order.
        assert ids[ids != MASK].tolist() == row[~mask].tolist()
        assert len(ids) == 64 - 20 + masks
    assert 0.02 < zero_spans / masks_seen < 0.1  # P(Poisson(3) = 0) = 0.05


def test_sentence_permutation_keeps_the_sentences():
    rng = np.random.RandomState(0)
    end = 9
    rows, moved = [], 0
    for _ in range(300):
        sentences = [list(rng.randint(10, 99, size=rng.randint(1, 8))) + [end]
                     for _ in range(rng.randint(1, 6))]
        row = [t for s in sentences for t in s][:24]
        rows.append(row + [77] * (24 - len(row)))  # an unfinished last sentence
    out = permute_sentences(tf.constant(rows), tf.constant([1, 2]), end_ids=[end]).numpy()

    def split(row):
        parts, current = [], []
        for token in row:
            current.append(token)
            if token == end:
                parts.append(tuple(current))
                current = []
        return parts + ([tuple(current)] if current else [])

    expected = 0.0
    for row, permuted in zip(rows, out):
        before, after = split(row), split(permuted.tolist())
        assert sorted(before) == sorted(after)
        if before[-1][-1] != end:
            assert after[-1] == before[-1]  # an unfinished sentence stays last
        finished = [p for p in before if p[-1] == end]
        if len(set(finished)) == len(finished) >= 3:
            moved += before != after
            expected += 1 - 1 / math.factorial(len(finished))  # not the identity
    assert expected > 50 and moved == pytest.approx(expected, rel=0.15), (moved, expected)
