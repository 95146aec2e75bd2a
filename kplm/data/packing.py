"""Sequence packing: concatenate tokenized examples and cut the stream into full-length rows."""
import tensorflow as tf


def tokenized_texts(source_ds, tokenizer, *, shuffle_buffer=0, training=True, seed=0,
                    field="text", source=None):
    """The ``field`` strings of ``source_ds``, shuffled when training (``shuffle_buffer`` > 1),
    tokenized in-graph in batches of 256: a dataset of ragged ``[texts, (tokens)]`` ids, what
    ``pack_tokens`` and ``pack_documents`` take.

    Examples that already carry token ids (``{"ids": int vector}``, the ``tfrecord`` source of
    ``kplm data prepare``) skip tokenization: they are shuffled and batched the same way, and
    must have been made with ``tokenizer``. ``source``, the ``DataSource`` that built
    ``source_ds`` (optional), is asked first: ``source.check_tokenizer(tokenizer)`` refuses a
    tokenizer other than the one prepared shards were made with. ``kplm pretrain`` checks every
    source that way before it builds the data.

    Example:
    >>> import tensorflow as tf
    >>> ids = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[5, 6], [7]]))
    >>> ds = tokenized_texts(ids.map(lambda x: {"ids": x}), tokenizer=None, training=False)
    >>> [r.to_list() for r in ds]
    [[[5, 6], [7]]]
    """
    if source is not None and tokenizer is not None:
        source.check_tokenizer(tokenizer)
    spec = source_ds.element_spec
    if isinstance(spec, dict) and "ids" in spec and field not in spec:
        ids = source_ds.map(lambda example: tf.cast(example["ids"], tf.int32))
        if training and shuffle_buffer > 1:
            ids = ids.shuffle(shuffle_buffer, seed=seed)
        return ids.ragged_batch(256)
    texts = source_ds.map(lambda example: example[field])
    if training and shuffle_buffer > 1:
        texts = texts.shuffle(shuffle_buffer, seed=seed)
    return texts.batch(256).map(tokenizer.build(), num_parallel_calls=tf.data.AUTOTUNE)


def pack_tokens(token_ds, sequence_length, start_id, end_id, separator_id=None):
    """Pack a dataset of ragged token batches into dense rows of exactly ``sequence_length``.

    Each example's tokens are followed by ``separator_id`` (if given); the concatenated stream is cut
    into chunks of ``sequence_length - 2`` and every chunk framed as ``[start] chunk [end]``. The
    remainder of one batch is carried into the next (``Dataset.scan``), so nothing is dropped but
    the final partial chunk of the whole stream. No padding is produced.

    Args:
        token_ds: ``tf.data.Dataset`` of ``tf.RaggedTensor`` ``[examples, (tokens)]`` int32.
        sequence_length: int, length of every output row (>= 3).
        start_id, end_id: ids framing each row (e.g. ``[CLS]`` and ``[SEP]``).
        separator_id: id appended after each example (e.g. ``[SEP]``), or None.

    Returns:
        A dataset of int32 ``[rows, sequence_length]`` tensors (a variable number of rows per
        element, possibly zero); ``unbatch()`` and re-``batch()`` it.

    Example:
    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensors(tf.ragged.constant([[5, 6, 7], [8, 9]], tf.int32))
    >>> [r.numpy().tolist() for r in pack_tokens(ds, 5, 1, 2, separator_id=3)]
    [[[1, 5, 6, 7, 2], [1, 3, 8, 9, 2]]]
    """
    chunk = sequence_length - 2
    if chunk < 1:
        raise ValueError(f"sequence_length must be >= 3, got {sequence_length}")

    def flatten(ragged):
        ragged = tf.cast(ragged, tf.int32)
        if separator_id is not None:
            sep = tf.fill([ragged.nrows(), 1], tf.constant(separator_id, tf.int32))
            ragged = tf.concat([ragged, tf.RaggedTensor.from_tensor(sep)], axis=1)
        return ragged.flat_values

    def step(carry, tokens):
        stream = tf.concat([carry, tokens], axis=0)
        n = tf.size(stream) // chunk
        rows = tf.reshape(stream[: n * chunk], [n, chunk])
        framed = tf.concat([tf.fill([n, 1], start_id), rows, tf.fill([n, 1], end_id)], axis=1)
        return stream[n * chunk:], framed

    flat = token_ds.map(flatten)
    return flat.scan(tf.zeros([0], tf.int32), step)


def pack_documents(token_ds, row_length, start_id=None, end_id=None):
    """Pack documents into one stream cut into dense rows of exactly ``row_length``, unframed.

    Every document becomes ``[start] tokens [end]`` (either id optional); the documents are
    concatenated in order and the stream is cut into consecutive rows, a document running on into
    the next row where it does not fit (what causal language models train on: no padding, no
    tokens invented at row boundaries). The remainder of one batch is carried into the next, so
    only the final partial row of the whole stream is dropped.

    Args:
        token_ds: ``tf.data.Dataset`` of ``tf.RaggedTensor`` ``[documents, (tokens)]`` int32.
        row_length: int, length of every output row (>= 1).
        start_id, end_id: ids put before and after each document (e.g. ``[CLS]`` and
            ``[SEP]``), or None.

    Returns:
        A dataset of int32 ``[rows, row_length]`` tensors (a variable number of rows per
        element, possibly zero); ``unbatch()`` and re-``batch()`` it.

    Example:
    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensors(tf.ragged.constant([[5, 6, 7], [8, 9]], tf.int32))
    >>> [r.numpy().tolist() for r in pack_documents(ds, 4, start_id=1, end_id=2)]
    [[[1, 5, 6, 7], [2, 1, 8, 9]]]
    """
    if row_length < 1:
        raise ValueError(f"row_length must be >= 1, got {row_length}")

    def flatten(ragged):
        ragged = tf.cast(ragged, tf.int32)
        parts = [ragged]
        if start_id is not None:
            parts.insert(0, tf.RaggedTensor.from_tensor(
                tf.fill([ragged.nrows(), 1], tf.constant(start_id, tf.int32))))
        if end_id is not None:
            parts.append(tf.RaggedTensor.from_tensor(
                tf.fill([ragged.nrows(), 1], tf.constant(end_id, tf.int32))))
        return tf.concat(parts, axis=1).flat_values

    def step(carry, tokens):
        stream = tf.concat([carry, tokens], axis=0)
        n = tf.size(stream) // row_length
        return stream[n * row_length:], tf.reshape(stream[: n * row_length], [n, row_length])

    return token_ds.map(flatten).scan(tf.zeros([0], tf.int32), step)
