"""Length bucketing (``kplm.data.bucketing``): rows grouped by length, batches cut to their
bucket, nothing but padding lost, every row kept once."""
import numpy as np
import pytest
import tensorflow as tf

from kplm.data.bucketing import bucket_by_length, sorted_by_length


def _rows(lengths, full, start=0):
    ids = np.zeros((len(lengths), full), "int32")
    for i, n in enumerate(lengths):
        ids[i, :n] = np.arange(1, n + 1) + 1000 * (start + i)
    return ids


def test_grouped_batches_keep_every_row_once_and_cut_only_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, size=300)
    ids = _rows(lengths, 64)
    labels = np.arange(300)
    ds = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": ids, "padding_mask": (ids != 0).astype("int32")}, labels)).batch(32)
    seen = []
    for x, y in bucket_by_length(ds, sequence_length=64, batch_size=32):
        width = x["token_ids"].shape[1]
        real = x["padding_mask"].numpy().sum(axis=1)
        assert len(set((real - 1) // 16)) == 1  # one bucket per batch
        assert width == ((real.max() - 1) // 16 + 1) * 16
        for row, label in zip(x["token_ids"].numpy(), y.numpy()):
            np.testing.assert_array_equal(row[:lengths[label]], ids[label, :lengths[label]])
            seen.append(int(label))
    assert sorted(seen) == list(range(300))


def test_sequence_to_sequence_streams_are_cut_apart_and_labels_follow_the_decoder():
    sources, targets = _rows([3, 30, 5, 28], 48), _rows([20, 2, 19, 3], 24)
    x = {"encoder_token_ids": sources, "encoder_padding_mask": (sources != 0).astype("int32"),
         "decoder_token_ids": targets, "decoder_padding_mask": (targets != 0).astype("int32")}
    labels, weights = targets, (targets != 0).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, labels, weights))
    (x, y, w), = bucket_by_length(ds, sequence_length=48, batch_size=4, group=False,
                                  labels_follow="decoder_")
    assert x["encoder_token_ids"].shape == x["encoder_padding_mask"].shape == (4, 32)
    assert x["decoder_token_ids"].shape == y.shape == w.shape == (4, 24)  # 20 -> 32, capped
    grouped = list(bucket_by_length(ds, sequence_length=48, batch_size=2,
                                    labels_follow="decoder_"))
    shapes = sorted((x["encoder_token_ids"].shape[1], y.shape[1]) for x, y, _ in grouped)
    assert shapes == [(16, 24), (32, 16)]  # grouped by both lengths: rows 0+2, rows 1+3


@pytest.mark.parametrize("as_dataset", [True, False])
def test_sorted_by_length_returns_each_row_with_its_input_position(as_dataset):
    lengths = [40, 3, 17, 64, 1, 9, 33]
    ids = _rows(lengths, 64)
    ds = tf.data.Dataset.from_tensor_slices(
        {"token_ids": ids, "padding_mask": (ids != 0).astype("int32"),
         "row": np.arange(len(lengths))}).batch(3)
    if not as_dataset:  # any iterable of dicts of tensors or arrays
        ds = [{k: tf.constant(v) for k, v in batch.items()} for batch in ds.as_numpy_iterator()]
    seen = []
    for rows, batch in sorted_by_length(ds, sequence_length=64, batch_size=2, chunk_rows=4):
        np.testing.assert_array_equal(batch["row"], rows)
        assert batch["token_ids"].shape[1] == min(-(-max(lengths[r] for r in rows) // 8) * 8,
                                                  64)
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(lengths)))
    assert seen[:2] == [4, 1]  # the first chunk (two batches of 3 rows) sorted: lengths 1, 3
