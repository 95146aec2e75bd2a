"""Length bucketing: batches padded to the smallest of a few lengths, not to ``sequence_length``.

A head's dataset pads every row to ``sequence_length``. Sentences are mostly much shorter
(SST-2's training sentences average ~21 tokens against a padded 64), and an encoder's cost
grows with the padded length (attention quadratically). ``bucket_by_length`` takes a head's
batches and:

1. **groups rows of similar length** (training, evaluation): each row of the (shuffled) stream
   joins the queue of its bucket, and a queue that holds ``batch_size`` rows is a batch
   (``tf.data``'s ``group_by_window``, as in ``bucket_by_sequence_length``). The order stays
   random and a pure function of the seed and the position: the iterator's state, queues
   included, is checkpointed like any ``tf.data`` iterator's. Unlike sorting a window of
   several batches (transformers' ``group_by_length``), no batch fills up with copies of one
   row when the window is larger than a small, repeated data set;
2. **cuts each batch to its bucket**: the longest row's length rounded up to a multiple of
   ``width`` (16: XLA compiles at most ``sequence_length / 16`` shapes). Only padding is cut:
   every tensor whose second dimension is ``sequence_length`` (inputs, per-token labels and
   weights) loses trailing columns that are padding in every row.

A row's length is the number of ones in ``x["padding_mask"]``; a sequence-to-sequence batch has
two streams, ``encoder_*`` and ``decoder_*``, each with its own mask and bucket (rows are grouped
by the pair), and its labels follow the decoder's. Trailing padding changes
nothing a Transformer computes for the real tokens (attention masks it out, positions start at
0), so predictions match the unbucketed run up to float rounding.

Example:
>>> import numpy as np, tensorflow as tf
>>> mask = np.zeros((4, 64), "int32"); mask[:, :5] = 1; mask[0, :20] = 1
>>> ds = tf.data.Dataset.from_tensors(({"token_ids": mask, "padding_mask": mask},
...                                    np.arange(4))).repeat(2)
>>> [tuple(x["token_ids"].shape) for x, y in bucket_by_length(ds, sequence_length=64,
...                                                         batch_size=3)]
[(3, 16), (3, 16), (2, 32)]
"""

MASK = "padding_mask"


def _streams(x):
    """``{prefix: mask}`` for every ``<prefix>padding_mask`` of ``x`` (``""`` for an encoder's
    ``padding_mask``; ``"encoder_"`` and ``"decoder_"`` for a sequence-to-sequence model's)."""
    return {key[:-len(MASK)]: value for key, value in x.items() if key.endswith(MASK)}


def _owner(key, prefixes):
    """The stream a key of ``x`` belongs to: the longest stream prefix it starts with."""
    return max((p for p in prefixes if key.startswith(p)), key=len, default=None)


def _bucket(length, width, full):
    import tensorflow as tf
    return tf.minimum(tf.maximum((length + width - 1) // width, 1) * width, full)


def cut_to_bucket(batch, *, sequence_length=None, width=16, labels_follow=""):
    """``batch`` (``x`` or a tuple ``(x, y[, w])`` of tensors) with its sequence tensors cut.

    Each stream of ``x`` (the tensors sharing the prefix of a ``<prefix>padding_mask``) is cut
    to its longest row rounded up to a multiple of ``width``; a tensor is cut when its second
    dimension is its mask's (or ``sequence_length`` where the mask's is unknown). ``y`` and
    ``w`` follow the stream ``labels_follow`` (``"decoder_"`` for sequence-to-sequence labels).
    """
    import tensorflow as tf
    x, rest = (batch[0], batch[1:]) if isinstance(batch, tuple) else (batch, ())
    streams = _streams(x)
    full, bucket = {}, {}
    for prefix, mask in streams.items():
        full[prefix] = mask.shape[1] if mask.shape[1] is not None else sequence_length
        lengths = tf.reduce_sum(tf.cast(tf.cast(mask, "bool"), "int32"), axis=1)
        bucket[prefix] = _bucket(tf.reduce_max(lengths), width, full[prefix])

    def cut(t, prefix):
        if prefix not in full or len(t.shape) < 2 or t.shape[1] != full[prefix]:
            return t
        return t[:, :bucket[prefix]]
    from kplm.training.distillation import TEACHER_OUTPUTS  # one vector per row: never cut
    x = {key: value if key == TEACHER_OUTPUTS else cut(value, _owner(key, streams))
         for key, value in x.items()}
    rest = tuple(tf.nest.map_structure(lambda t: cut(t, labels_follow), r) for r in rest)
    return (x, *rest) if isinstance(batch, tuple) else x


def _row_bucket(width, sequence_length):
    """A row's group: the bucket of each of its streams, combined into one integer."""
    import tensorflow as tf

    def key(*row):
        x = row[0]
        group = tf.constant(0, "int64")
        for prefix, mask in sorted(_streams(x).items()):
            full = mask.shape[0] if mask.shape[0] is not None else sequence_length
            count = (full + width - 1) // width
            length = tf.reduce_sum(tf.cast(tf.cast(mask, "bool"), "int64"))
            group = group * count + tf.minimum(tf.maximum(length - 1, 0) // width, count - 1)
        return group
    return key


def bucket_by_length(batches, *, sequence_length, batch_size, width=16, training=False,
                     group=True, labels_follow=""):
    """Length-bucketed batches from a head's ``batches`` (see the module docstring).

    Args:
        batches: a ``tf.data.Dataset`` of batches whose ``x`` has a ``padding_mask`` (or
            several: ``encoder_padding_mask``, ``decoder_padding_mask``), padded to fixed
            lengths.
        sequence_length: int. The length the head padded to (where a mask's is unknown).
        batch_size: int. Rows per batch (the last batch of each bucket of a finite dataset may
            have fewer).
        width: int. Bucket lengths are multiples of it. Defaults to 16.
        training: bool. Drop short batches (an endless training set has none but at the end).
        group: bool. Group rows by bucket (False: only cut each batch, keeping the row order,
            for predictions returned in input order). Defaults to True.
        labels_follow: str. The stream (mask prefix) that ``y`` and ``w`` are aligned with.
            Defaults to ``""`` (``padding_mask``).
    """
    import tensorflow as tf

    def cut(*b):
        return cut_to_bucket(b if len(b) > 1 else b[0], sequence_length=sequence_length,
                             width=width, labels_follow=labels_follow)

    if group:
        batches = batches.unbatch().group_by_window(
            key_func=_row_bucket(width, sequence_length),
            reduce_func=lambda _, rows: rows.batch(batch_size, drop_remainder=training),
            window_size=batch_size)
    return batches.map(cut, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def sorted_by_length(batches, *, sequence_length, batch_size, width=None, chunk_rows=8192):
    """For inference: ``(rows, batch)`` pairs over the rows of ``batches``, sorted by length.

    ``batches`` (a ``tf.data.Dataset`` or any iterable of dicts of arrays) yields dicts in
    input order (``x`` with a ``padding_mask``, padded to
    ``sequence_length``, plus any per-row extras). Up to ``chunk_rows`` rows at a time are sorted
    by their length (the number of ones in ``padding_mask``; memory stays flat in the input
    size), batched by ``batch_size``, and each batch is cut to its longest row rounded up to
    ``width``: by default ``sequence_length / 16``, at least 8, so that a model compiled with
    XLA (Keras' default for ``predict`` on a GPU) sees at most 16 lengths. ``rows`` holds the
    input positions of a batch's rows, so that the caller puts each output back in input
    order.

    Example:
    >>> import numpy as np, tensorflow as tf
    >>> mask = np.zeros((4, 64), "int32"); mask[[0, 2], :40] = 1; mask[[1, 3], :3] = 1
    >>> ds = tf.data.Dataset.from_tensors({"padding_mask": mask})
    >>> [(rows.tolist(), b["padding_mask"].shape) for rows, b in
    ...  sorted_by_length(ds, sequence_length=64, batch_size=2)]
    [([1, 3], (2, 8)), ([0, 2], (2, 40))]
    """
    import numpy as np
    width = width or max(8, -(-sequence_length // 16))

    def emit(chunk, start):
        merged = {k: np.concatenate([c[k] for c in chunk]) for k in chunk[0]}
        lengths = (merged["padding_mask"] != 0).sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            longest = max(int(lengths[rows].max()), 1)
            bucket = min(-(-longest // width) * width, sequence_length)
            yield start + rows, {
                k: v[rows][:, :bucket] if v.ndim >= 2 and v.shape[1] == sequence_length
                else v[rows] for k, v in merged.items()}

    chunk, size, start = [], 0, 0
    if hasattr(batches, "as_numpy_iterator"):
        batches = batches.as_numpy_iterator()
    for batch in batches:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        chunk.append(batch)
        size += len(batch["padding_mask"])
        if size >= chunk_rows:
            yield from emit(chunk, start)
            chunk, start, size = [], start + size, 0
    if chunk:
        yield from emit(chunk, start)
