"""Sequence-to-sequence noising as pure, stateless TF ops: T5 span corruption, BART text
infilling and sentence permutation. Every function takes a batch of equal-length rows (packed
text) and a ``seed`` (int ``[2]``, e.g. ``[run seed, batch index]``): the same batch and seed
always give the same noise, so a resumed run sees exactly the data an uninterrupted one would.
"""
import tensorflow as tf


# --- T5 span corruption -------------------------------------------------------------------------
def span_corruption_lengths(raw_length, noise_density=0.15, mean_noise_span_length=3.0):
    """What span corruption makes of rows of ``raw_length`` tokens (as T5 computes it).

    Returns ``(num_noise_tokens, num_noise_spans, inputs_length, targets_length)``; the two
    lengths count the end token appended to inputs and targets.

    Example:
    >>> span_corruption_lengths(568)
    (85, 28, 512, 114)
    """
    num_noise = min(max(int(round(raw_length * noise_density)), 1), raw_length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    num_spans = min(num_spans, num_noise, raw_length - num_noise)
    # Inputs: the kept tokens, a sentinel per noise span, an end token. Targets: a sentinel
    # before each noise span, its tokens, an end token.
    return (num_noise, num_spans, raw_length - num_noise + num_spans + 1,
            num_noise + num_spans + 1)


def span_corruption_raw_length(inputs_length, noise_density=0.15, mean_noise_span_length=3.0):
    """The longest raw row whose corrupted inputs (end token included) fit ``inputs_length``,
    and the targets length it gives: T5's ``random_spans_helper``.

    Example:
    >>> span_corruption_raw_length(512)
    (568, 114)
    """
    raw = inputs_length - 1
    while span_corruption_lengths(raw + 1, noise_density, mean_noise_span_length)[2] \
            <= inputs_length:
        raw += 1
    return raw, span_corruption_lengths(raw, noise_density, mean_noise_span_length)[3]


def _random_segmentation(batch, num_items, num_segments, seed):
    """Lengths ``[batch, num_segments]`` (each >= 1, summing to ``num_items``), uniformly
    among such compositions: ``num_segments - 1`` distinct cut points among ``num_items - 1``."""
    if num_segments == 1:
        return tf.fill([batch, 1], num_items)
    scores = tf.random.stateless_uniform([batch, num_items - 1], seed)
    cuts = tf.sort(tf.math.top_k(scores, k=num_segments - 1).indices + 1, axis=1)
    ends = tf.concat([cuts, tf.fill([batch, 1], num_items)], axis=1)
    starts = tf.concat([tf.zeros([batch, 1], tf.int32), cuts], axis=1)
    return ends - starts


def random_spans_noise_mask(batch, length, seed, noise_density=0.15,
                            mean_noise_span_length=3.0):
    """T5's ``random_spans_noise_mask`` for ``batch`` rows of ``length`` tokens: a boolean
    ``[batch, length]`` mask, True on ``num_noise_tokens`` tokens in ``num_noise_spans`` spans
    (``span_corruption_lengths``) whose lengths, and the gaps between them, are random
    compositions. Each row starts with kept tokens and ends with a noise span.

    Example:
    >>> mask = random_spans_noise_mask(2, 20, tf.constant([0, 1]), 0.25, 2.5)
    >>> mask.numpy().sum(axis=1).tolist()
    [5, 5]
    """
    num_noise, num_spans, _, _ = span_corruption_lengths(length, noise_density,
                                                         mean_noise_span_length)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    noise = _random_segmentation(batch, num_noise, num_spans, seeds[0])
    kept = _random_segmentation(batch, length - num_noise, num_spans, seeds[1])
    span_ends = tf.cumsum(tf.reshape(tf.stack([kept, noise], axis=2), [batch, 2 * num_spans]),
                          axis=1)
    positions = tf.broadcast_to(tf.range(length)[None, :], [batch, length])
    span_index = tf.searchsorted(span_ends, positions, side="right")
    return tf.equal(span_index % 2, 1)


def _sentinel_spans(token_ids, spans, sentinel_ids):
    """Replace each run of ``spans`` tokens by one sentinel (numbered in order per row) and
    drop the rest of the run; every row must keep the same number of tokens."""
    before = tf.pad(spans[:, :-1], [[0, 0], [1, 0]])
    first = spans & tf.logical_not(before)
    number = tf.maximum(tf.cumsum(tf.cast(first, tf.int32), axis=1) - 1, 0)
    values = tf.where(first, tf.gather(tf.constant(sentinel_ids, tf.int32), number), token_ids)
    keep = tf.logical_not(spans & before)
    return tf.reshape(tf.boolean_mask(values, keep), [tf.shape(token_ids)[0], -1])


def span_corruption(token_ids, seed, *, sentinel_ids, end_id, noise_density=0.15,
                    mean_noise_span_length=3.0):
    """T5 span corruption of equal-length rows, statelessly.

    Noise spans are drawn by ``random_spans_noise_mask``. In the inputs each noise span is
    replaced by one sentinel, ``sentinel_ids[0]``, ``sentinel_ids[1]``, ... in order; the
    targets are each sentinel followed by the span it replaced. Both end with ``end_id``.

    Args:
        token_ids: int32 ``[batch, length]`` (a static ``length``).
        seed: int ``[2]`` tensor.
        sentinel_ids: ids of ``<extra_id_0>``, ``<extra_id_1>``, ... (at least as many as
            noise spans).

    Returns:
        dict of ``inputs`` ``[batch, inputs_length]``, ``targets`` ``[batch, targets_length]``
        (``span_corruption_lengths``) and ``noise_mask`` (bool ``[batch, length]``).

    Example:
    >>> out = span_corruption(tf.constant([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]),
    ...                       tf.constant([0, 3]), sentinel_ids=[100, 101], end_id=1,
    ...                       noise_density=0.3, mean_noise_span_length=1.5)
    >>> out["inputs"].numpy().tolist(), out["targets"].numpy().tolist()
    ([[10, 11, 12, 13, 14, 15, 100, 18, 101, 1]], [[100, 16, 17, 101, 19, 1]])
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    batch, length = tf.shape(token_ids)[0], token_ids.shape[1]
    _, num_spans, _, _ = span_corruption_lengths(length, noise_density, mean_noise_span_length)
    if num_spans > len(sentinel_ids):
        raise ValueError(f"{num_spans} noise spans per row but only {len(sentinel_ids)} "
                         "sentinels")
    noise = random_spans_noise_mask(batch, length, seed, noise_density, mean_noise_span_length)
    inputs = _sentinel_spans(token_ids, noise, sentinel_ids)
    targets = _sentinel_spans(token_ids, tf.logical_not(noise), sentinel_ids)
    end = tf.fill([batch, 1], tf.constant(end_id, tf.int32))
    return {"inputs": tf.concat([inputs, end], axis=1),
            "targets": tf.concat([targets, end], axis=1), "noise_mask": noise}


# --- BART text infilling and sentence permutation ----------------------------------------------
def text_infilling(token_ids, seed, *, mask_id, mask_rate=0.3, poisson_lambda=3.0):
    """BART text infilling of equal-length rows, statelessly.

    Span lengths are drawn from Poisson(``poisson_lambda``) until they cover
    ``ceil(mask_rate * length)`` tokens (the last one cut to the budget, as BART does); the
    spans are placed at random without overlapping, so exactly that many tokens are masked. Each
    span becomes one ``mask_id``; a 0-length span inserts a ``mask_id``.

    Args:
        token_ids: int32 ``[batch, length]``.
        seed: int ``[2]`` tensor.

    Returns:
        dict of ``token_ids`` (``tf.RaggedTensor`` ``[batch, (n)]``, the noised rows),
        ``noise_mask`` (bool ``[batch, length]``, the tokens replaced), ``span_lengths``
        (int32 ``[batch, max_spans]``, the Poisson draws) and ``span_used`` (bool, the draws
        that became spans).

    Example:
    >>> out = text_infilling(tf.constant([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]),
    ...                      tf.constant([0, 1]), mask_id=4)
    >>> int(tf.reduce_sum(tf.cast(out["noise_mask"], tf.int32)))  # ceil(0.3 * 10)
    3
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    budget = tf.cast(tf.math.ceil(tf.cast(length, tf.float32) * mask_rate), tf.int32)
    # Enough draws to reach the budget but with vanishing probability (8 more than needed at
    # one token each).
    draws = budget + 8
    lengths = tf.random.stateless_poisson([batch, draws], seeds[0], poisson_lambda, tf.int32)
    before = tf.cumsum(lengths, axis=1, exclusive=True)
    used = before < budget
    cut = tf.where(used, tf.minimum(lengths, budget - before), 0)  # [B, D]
    num_spans = tf.reduce_sum(tf.cast(used, tf.int32), axis=1)  # [B]
    masked = tf.reduce_sum(cut, axis=1)  # [B], == budget unless the draws fell short

    # Stars and bars: each row is a sequence of (length - masked) kept tokens and num_spans
    # spans; choosing the spans' slots uniformly places them uniformly without overlap.
    slots = length - masked + num_spans  # [B]
    width = length + draws
    slot_range = tf.range(width)[None, :]
    scores = tf.random.stateless_uniform([batch, width], seeds[1])
    scores = tf.where(slot_range < slots[:, None], scores, -1.0)
    chosen = tf.math.top_k(scores, k=draws).indices
    chosen = tf.where(tf.range(draws)[None, :] < num_spans[:, None], chosen, width + 1)
    span_slot = tf.sort(chosen, axis=1)  # span j sits at slot span_slot[j]
    starts = span_slot - tf.range(draws)[None, :] + tf.cumsum(cut, axis=1, exclusive=True)

    # Covered tokens: +1 at each start, -1 at each end, running sum.
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, draws])
    starts_in = tf.minimum(starts, length)
    ends_in = tf.minimum(starts + cut, length)
    delta = tf.zeros([batch, length + 1], tf.int32)
    delta = tf.tensor_scatter_nd_add(delta, tf.stack([rows, starts_in], -1), tf.where(used, 1, 0))
    delta = tf.tensor_scatter_nd_add(delta, tf.stack([rows, ends_in], -1), tf.where(used, -1, 0))
    noise = tf.cumsum(delta, axis=1)[:, :length] > 0

    # Read the slots in order: a span slot emits mask_id, a token slot the next kept token.
    is_span = tf.scatter_nd(
        tf.stack([rows, tf.minimum(span_slot, width)], -1), tf.cast(used, tf.int32),
        tf.stack([batch, width + 2]))[:, :width] > 0
    token_rank = tf.cumsum(1 - tf.cast(is_span, tf.int32), axis=1, exclusive=True)
    positions = tf.range(length)[None, :]
    kept_positions = tf.argsort(tf.where(noise, length + positions, positions), axis=1,
                                stable=True)
    kept = tf.gather(token_ids, kept_positions, batch_dims=1)
    kept = tf.pad(kept, [[0, 0], [0, draws]])
    values = tf.where(is_span, mask_id, tf.gather(kept, tf.minimum(token_rank, width - 1),
                                                   batch_dims=1))
    return {"token_ids": tf.RaggedTensor.from_tensor(values, lengths=slots),
            "noise_mask": noise, "span_lengths": lengths, "span_used": used}


def permute_sentences(token_ids, seed, *, end_ids):
    """Shuffle the sentences of each row (BART's sentence permutation), statelessly.

    A sentence ends after a token in ``end_ids`` (e.g. ``.`` ``!`` ``?``); the sentences are
    put in a random order, each kept intact. Tokens after the last end mark (a sentence that
    runs on into the next row) stay at the end, so they never join another sentence.

    Args:
        token_ids: int32 ``[batch, length]``.
        seed: int ``[2]`` tensor.
        end_ids: list of int, the end-of-sentence token ids.

    Example:
    >>> rows = tf.constant([[5, 6, 9, 7, 9, 8, 8, 9]])  # sentences [5 6 9] [7 9] [8 8 9]
    >>> out = permute_sentences(rows, tf.constant([0, 2]), end_ids=[9])
    >>> sorted(out.numpy()[0].tolist()) == sorted(rows.numpy()[0].tolist())
    True
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    is_end = tf.reduce_any(token_ids[..., None] == tf.constant(end_ids, tf.int32), axis=-1)
    sentence = tf.cumsum(tf.cast(is_end, tf.int32), axis=1, exclusive=True)  # [B, L]
    # A random rank per sentence slot (a permutation of 0..L-1), shared by its tokens; a stable
    # sort by it keeps each sentence's tokens in order.
    rank = tf.argsort(tf.random.stateless_uniform([batch, length], tf.cast(seed, tf.int64)),
                      axis=1)
    key = tf.gather(rank, sentence, batch_dims=1)
    unfinished = sentence == tf.reduce_sum(tf.cast(is_end, tf.int32), axis=1, keepdims=True)
    order = tf.argsort(tf.where(unfinished, length, key), axis=1, stable=True)
    return tf.gather(token_ids, order, batch_dims=1)

