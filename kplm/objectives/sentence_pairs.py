"""Segment pairs cut from documents, for next-sentence and sentence-order prediction.

BERT's recipe (``create_pretraining_data.py``), streaming in ``tf.data``: each document is split
into sentences, consecutive sentences are grouped into chunks of about the target length, and each
chunk of two or more sentences is cut at a random sentence boundary into segments A and B. Next
sentence prediction then replaces B, half of the time, by the B segment of a chunk from another
document; sentence order prediction (ALBERT) swaps A and B half of the time. Every random choice
is a stateless function of ``(seed, stream, index)``, so the same run builds the same pairs.
"""
import tensorflow as tf


def split_sentences(document):
    """A scalar string document -> its sentences (1-D strings): its lines, further split after
    ``.``, ``!`` or ``?`` followed by a space.

    Example:
    >>> split_sentences(tf.constant("One. Two!\\nThree")).numpy().tolist()
    [b'One.', b'Two!', b'Three']
    """
    text = tf.strings.regex_replace(document, r"([.!?]) +", "\\1\n")
    parts = tf.strings.strip(tf.strings.split(text, "\n"))
    return tf.boolean_mask(parts, tf.strings.length(parts) > 0)


def document_chunks(sentence_tokens, target_length, seed):
    """Group a document's sentences into chunks and choose where each chunk splits into A | B.

    Sentence ``i`` joins chunk ``floor(start_i / target_length)`` (``start_i``: its first token's
    offset in the document), so chunks hold about ``target_length`` tokens (packing trims the
    rare longer one). Chunks of fewer than two sentences are dropped: they have no boundary.

    Args:
        sentence_tokens: ``tf.RaggedTensor`` ``[sentences, (tokens)]`` int32.
        target_length: int, tokens per chunk (sequence length minus the special tokens).
        seed: int ``[2]`` tensor for the stateless choice of split points.

    Returns:
        ``(chunks, a_lengths)``: ``tf.RaggedTensor`` ``[chunks, (tokens)]`` and int32
        ``[chunks]``, the number of leading tokens of each chunk that form segment A (a whole
        number of sentences, at least one, leaving at least one sentence for B).

    Example:
    >>> tokens = tf.ragged.constant([[1, 2], [3], [4, 5, 6], [7]], tf.int32)
    >>> chunks, a = document_chunks(tokens, 100, tf.constant([0, 0]))
    >>> chunks.to_list(), 0 < int(a[0]) < 7
    ([[1, 2, 3, 4, 5, 6, 7]], True)
    """
    lengths = tf.cast(sentence_tokens.row_lengths(), tf.int32)
    starts = tf.cumsum(lengths, exclusive=True)
    # chunk ids are non-decreasing; unique() renumbers them 0, 1, 2, ... without gaps
    _, chunk_id = tf.unique(starts // target_length)
    num_chunks = tf.size(tf.unique(chunk_id)[0])
    sentences = tf.math.bincount(chunk_id, minlength=num_chunks, maxlength=num_chunks)
    chunk_lengths = tf.math.unsorted_segment_sum(lengths, chunk_id, num_chunks)
    first = tf.cumsum(sentences, exclusive=True)
    # Sentences in A: uniform in [1, n - 1] for a chunk of n sentences.
    u = tf.random.stateless_uniform([num_chunks], seed)
    in_a = 1 + tf.cast(tf.floor(u * tf.cast(tf.maximum(sentences - 1, 1), tf.float32)), tf.int32)
    in_a = tf.minimum(in_a, tf.maximum(sentences - 1, 1))
    ends = tf.cumsum(lengths)
    a_lengths = (tf.gather(ends, tf.minimum(first + in_a - 1, tf.size(ends) - 1))
                 - tf.gather(starts, tf.minimum(first, tf.size(starts) - 1)))
    chunks = tf.RaggedTensor.from_row_lengths(
        tf.cast(sentence_tokens.flat_values, tf.int32), chunk_lengths)
    keep = (sentences >= 2) & (a_lengths > 0) & (a_lengths < chunk_lengths)
    return tf.ragged.boolean_mask(chunks, keep), tf.boolean_mask(a_lengths, keep)


def segment_pairs(documents, tokenizer_layer, *, target_length, mode, seed, training,
                  shuffle_buffer=1000, partner_buffer=1000):
    """Documents -> ``(segment_a, segment_b, label)`` examples (int32 1-D, 1-D, scalar).

    ``mode="next_sentence"``: label 1 when B was replaced by a segment of another document
    (probability 1/2), 0 when B is the text that really follows A. ``mode="sentence_order"``:
    label 1 when A and B were swapped (probability 1/2). The partner segments come from a second
    pass over the documents, shuffled with a buffer of ``partner_buffer`` chunks; a partner that
    happens to come from the same document is not used (B stays, label 0).

    Args:
        documents: ``tf.data.Dataset`` of scalar strings, one document each.
        tokenizer_layer: an in-graph keras_hub tokenizer (strings -> ragged ids).
        target_length: int, tokens per chunk.
        mode: ``"next_sentence"`` or ``"sentence_order"``.
        seed: int.
        training: bool. Training shuffles documents; validation is deterministic.
    """
    stream = 0 if training else 1

    def to_chunks(index, document):
        tokens = tokenizer_layer(split_sentences(document))
        chunks, a_lengths = document_chunks(
            tokens, target_length, tf.stack([tf.cast(seed, tf.int64) * 4 + stream, index]))
        count = tf.shape(a_lengths)[0]
        return tf.data.Dataset.from_tensor_slices(
            (chunks, a_lengths, tf.fill([count], index)))

    def chunk_stream(shuffle_seed):
        # Documents are numbered before shuffling: the number identifies a document in both
        # streams, so a partner from the same document is recognised.
        docs = documents.enumerate()
        if training and shuffle_buffer > 1:
            docs = docs.shuffle(shuffle_buffer, seed=shuffle_seed)
        return docs.flat_map(to_chunks)

    chunks = chunk_stream(seed)
    if mode == "next_sentence":
        # A second pass in another order supplies segments from other documents.
        partners = chunk_stream(seed + 1).shuffle(
            partner_buffer, seed=seed + 2, reshuffle_each_iteration=training).repeat()

    def make_pair(index, chunk, partner):
        tokens, a_length, document = chunk
        other_tokens, other_a_length, other_document = partner
        first, second = tokens[:a_length], tokens[a_length:]
        coin = tf.random.stateless_uniform(
            [], tf.stack([tf.cast(seed, tf.int64) * 4 + 2 + stream, index])) < 0.5
        if mode == "next_sentence":
            replaced = coin & tf.not_equal(document, other_document)
            second = tf.cond(replaced, lambda: other_tokens[other_a_length:], lambda: second)
            label = tf.cast(replaced, tf.int32)
        else:
            first, second = tf.cond(coin, lambda: (second, first), lambda: (first, second))
            label = tf.cast(coin, tf.int32)
        return first, second, label

    if mode == "next_sentence":
        pairs = tf.data.Dataset.zip((chunks, partners))
    else:
        pairs = chunks.map(lambda *chunk: (chunk, chunk))
    return pairs.enumerate().map(lambda i, pair: make_pair(i, *pair),
                                 num_parallel_calls=tf.data.AUTOTUNE)
