"""Dynamic masked-LM masking as pure, stateless TF ops (deterministic for a given seed)."""
import tensorflow as tf


def mask_tokens(
    token_ids,
    seed,
    *,
    mask_token_id,
    vocabulary_size,
    special_token_ids,
    max_predictions,
    mask_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    continuation_mask=None,
):
    """Choose tokens to predict and corrupt them (BERT's 80/10/10), in graph, statelessly.

    Per row, ``round(mask_rate * n)`` of the ``n`` selectable (non-special) tokens are chosen at
    random, at least one and at most ``max_predictions``. With ``continuation_mask`` (a boolean
    vector over the vocabulary, true for word-piece continuations such as ``##ing``) whole words
    are chosen: all pieces of a word or none, never exceeding the budget. Of the chosen tokens,
    ``mask_token_rate`` become ``mask_token_id``, ``random_token_rate`` a random non-special token,
    the rest stay as they are.

    Randomness comes from ``tf.random.stateless_*`` keyed by ``seed`` (shape ``[2]`` int), so the
    same batch and seed give the same masks: a resumed run masks exactly like an uninterrupted one.

    Args:
        token_ids: int32 ``[batch, length]``.
        seed: int ``[2]`` tensor.

    Returns:
        dict of ``token_ids`` (corrupted), ``mask_positions`` int32 ``[batch, max_predictions]``
        (ascending, padded with 0), ``mask_ids`` (original ids, 0 in padded slots) and
        ``mask_weights`` float32 (1 for real slots, 0 for padding).

    Example:
    >>> import tensorflow as tf
    >>> out = mask_tokens(tf.constant([[1, 7, 8, 9, 2]]), tf.constant([0, 1]), mask_token_id=4,
    ...                   vocabulary_size=10, special_token_ids=[0, 1, 2, 3, 4], max_predictions=2,
    ...                   mask_rate=0.5)
    >>> int(tf.reduce_sum(out["mask_weights"]))
    2
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    seed = tf.cast(seed, tf.int64)
    batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)

    special = tf.constant(sorted(set(special_token_ids)), tf.int32)
    is_special = tf.reduce_any(token_ids[..., None] == special, axis=-1)
    selectable = tf.logical_not(is_special)

    # Unit of selection: a word (whole-word masking) or a token.
    if continuation_mask is not None:
        is_cont = tf.gather(tf.constant(continuation_mask, tf.bool), token_ids) & selectable
        starts = tf.logical_not(is_cont)
    else:
        starts = tf.ones_like(selectable)
    word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1  # [B, L] word index per token

    # A random score per word, shared by its pieces; unselectable tokens sort last.
    word_score = tf.random.stateless_uniform([batch, length], seeds[0])
    score = tf.where(selectable, tf.gather(word_score, word, batch_dims=1), 2.0)
    order = tf.argsort(score, axis=1, stable=True)
    sorted_sel = tf.gather(selectable, order, batch_dims=1)

    n_sel = tf.reduce_sum(tf.cast(selectable, tf.int32), axis=1)
    budget = tf.cast(tf.round(tf.cast(n_sel, tf.float32) * mask_rate), tf.int32)
    budget = tf.minimum(tf.maximum(budget, tf.minimum(n_sel, 1)), max_predictions)

    # A word is accepted when the running token count at its last piece fits the budget.
    running = tf.cumsum(tf.cast(sorted_sel, tf.int32), axis=1)
    segment = word + tf.range(batch)[:, None] * length  # unique (row, word) ids
    sorted_segment = tf.gather(segment, order, batch_dims=1)
    word_end = tf.math.unsorted_segment_max(
        tf.reshape(running, [-1]), tf.reshape(sorted_segment, [-1]), batch * length)
    fits = tf.gather(word_end, sorted_segment) <= budget[:, None]
    accepted_sorted = sorted_sel & fits
    inverse = tf.argsort(order, axis=1)
    chosen = tf.gather(accepted_sorted, inverse, batch_dims=1)  # [B, L] in original order

    # Positions of chosen tokens, ascending, padded to max_predictions.
    positions = tf.range(length)[None, :]
    key = tf.where(chosen, positions, length + positions)
    first = -tf.math.top_k(-key, k=tf.minimum(max_predictions, length)).values
    pad = max_predictions - tf.shape(first)[1]
    first = tf.pad(first, [[0, 0], [0, pad]], constant_values=2 * length)
    valid = first < length
    mask_positions = tf.where(valid, first, 0)
    mask_ids = tf.where(valid, tf.gather(token_ids, mask_positions, batch_dims=1), 0)

    # 80 / 10 / 10 corruption.
    r = tf.random.stateless_uniform([batch, length], seeds[1])
    to_mask = chosen & (r < mask_token_rate)
    to_random = chosen & (r >= mask_token_rate) & (r < mask_token_rate + random_token_rate)
    candidates = tf.constant(
        [i for i in range(vocabulary_size) if i not in set(special_token_ids)], tf.int32)
    pick = tf.random.stateless_uniform([batch, length], seeds[2], 0, tf.size(candidates), tf.int32)
    corrupted = tf.where(to_mask, mask_token_id, token_ids)
    corrupted = tf.where(to_random, tf.gather(candidates, pick), corrupted)
    return {
        "token_ids": corrupted,
        "mask_positions": mask_positions,
        "mask_ids": mask_ids,
        "mask_weights": tf.cast(valid, tf.float32),
    }
