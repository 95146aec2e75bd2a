"""Masked-LM data: packing and masking statistics measured over many real sequences."""
import numpy as np
import pytest
import tensorflow as tf

from kplm.data.packing import pack_tokens
from kplm.data.text_files import TextFiles
from kplm.objectives.masked_lm import MaskedLMObjective
from kplm.objectives.masking import mask_tokens

from conftest import TRAIN


def batches(tokenizer, objective, n, seed=0, batch_size=32, sequence_length=128):
    ds = objective.dataset(TextFiles(paths=[TRAIN]).build(), tokenizer, batch_size=batch_size,
                           sequence_length=sequence_length, seed=seed, training=True)
    return [tuple(np.asarray(t) if not isinstance(t, dict) else {k: np.asarray(v) for k, v in t.items()}
                  for t in b) for b in ds.take(n)]


@pytest.fixture(scope="module")
def plain_unmasked(tokenizer):
    """The packed rows before masking, for comparison."""
    objective = MaskedLMObjective(shuffle_buffer=1)
    rows = objective.token_rows(TextFiles(paths=[TRAIN]).build(), tokenizer, 128, training=False)
    return np.stack([r.numpy() for r, _ in rows.take(32 * 40)])


@pytest.mark.parametrize("whole_word", [False, True])
def test_rate_and_80_10_10_split(tokenizer, plain_unmasked, whole_word):
    objective = MaskedLMObjective(whole_word=whole_word, shuffle_buffer=1)
    data = batches(tokenizer, objective, 40)
    original = plain_unmasked
    specials = set(tokenizer.special_token_ids)
    mask_id = tokenizer.token_to_id("[MASK]")
    chosen = kept = masked = randomized = selectable = 0
    for i, (x, y, w) in enumerate(data):
        rows = original[i * 32:(i + 1) * 32]
        positions, weights = x["mask_positions"], w > 0
        # Labels are the original tokens at the chosen positions.
        np.testing.assert_array_equal(np.take_along_axis(rows, positions, 1)[weights], y[weights])
        # Special tokens are never chosen.
        assert not any(t in specials for t in y[weights])
        # Nothing changes outside the chosen positions.
        changed = x["token_ids"] != rows
        outside = changed.copy()
        np.put_along_axis(outside, positions, False, 1)
        assert not outside.any()
        now = np.take_along_axis(x["token_ids"], positions, 1)[weights]
        before = y[weights]
        chosen += weights.sum()
        masked += (now == mask_id).sum()
        kept += (now == before).sum()
        randomized += ((now != mask_id) & (now != before)).sum()
        selectable += sum(t not in specials for t in rows.ravel())
    rate = chosen / selectable
    assert (0.145 if not whole_word else 0.12) < rate <= 0.155, rate
    assert abs(masked / chosen - 0.8) < 0.02
    # A random replacement may draw the original token itself (p = 1/vocabulary).
    assert abs(kept / chosen - 0.1) < 0.015 and abs(randomized / chosen - 0.1) < 0.015


def test_whole_word_masks_every_piece(tokenizer):
    objective = MaskedLMObjective(whole_word=True, shuffle_buffer=1)
    continuation = np.array(tokenizer.continuation_mask())
    data = batches(tokenizer, objective, 10)
    checked = 0
    for x, y, w in data:
        for row in range(x["token_ids"].shape[0]):
            chosen = set(x["mask_positions"][row][w[row] > 0].tolist())
            ids = x["token_ids"][row]
            for p in chosen:
                # The piece after a chosen token continues the same word: chosen too.
                nxt = p + 1
                if nxt < len(ids) and nxt not in chosen:
                    original_next = ids[nxt]
                    assert not continuation[original_next] or original_next in tokenizer.special_token_ids
                    checked += 1
    assert checked > 100


def test_masks_are_deterministic_per_seed_and_differ_between_steps(tokenizer):
    objective = MaskedLMObjective(shuffle_buffer=1)
    a = batches(tokenizer, objective, 3, seed=5)
    b = batches(tokenizer, objective, 3, seed=5)
    c = batches(tokenizer, objective, 3, seed=6)
    np.testing.assert_array_equal(a[2][0]["mask_positions"], b[2][0]["mask_positions"])
    assert not np.array_equal(a[2][0]["mask_positions"], c[2][0]["mask_positions"])
    assert not np.array_equal(a[0][0]["mask_positions"], a[1][0]["mask_positions"])


def test_packing_fills_rows_without_padding(tokenizer, plain_unmasked):
    pad = tokenizer.token_to_id("[PAD]")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert not (plain_unmasked == pad).any()
    assert (plain_unmasked[:, 0] == cls).all() and (plain_unmasked[:, -1] == sep).all()


def test_pack_tokens_keeps_stream_order():
    ds = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[5, 6, 7], [8], [9, 10, 11, 12]]))
    rows = [r.numpy().tolist() for r in pack_tokens(ds.batch(2), 4, 1, 2, separator_id=3).unbatch()]
    assert rows == [[1, 5, 6, 2], [1, 7, 3, 2], [1, 8, 3, 2], [1, 9, 10, 2], [1, 11, 12, 2]]


def test_mask_budget_respects_max_predictions():
    ids = tf.fill([4, 50], 7)
    out = mask_tokens(ids, tf.constant([1, 2]), mask_token_id=4, vocabulary_size=10,
                      special_token_ids=[0, 1, 2, 3, 4], max_predictions=3, mask_rate=0.5)
    assert out["mask_positions"].shape == (4, 3)
    assert out["mask_weights"].numpy().sum(axis=1).tolist() == [3, 3, 3, 3]
