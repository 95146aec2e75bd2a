"""The ``span_corruption`` objective: T5's pretraining on an encoder-decoder backbone. Also the
data plumbing it shares with ``denoising``: packed rows, teacher forcing, the target-length
check."""
from kplm.checks import check_limits
from kplm.components import Objective
from kplm.errors import ConfigError, DataError
from kplm.hookspecs import hookimpl


class SpanCorruptionObjective(Objective):
    """T5 span corruption: random spans of the text are dropped from the encoder input, each
    replaced by a sentinel (``<extra_id_0>``, ``<extra_id_1>``, ... in order), and the decoder
    writes out each sentinel followed by the span it replaced, then ``</s>``.

    The corpus is tokenized in-graph and packed, with no padding, into rows of the raw length
    whose corrupted input (end token included) just fits ``sequence_length``, as T5 computes it
    from the noise parameters (``sequence_length`` 512 with the defaults: rows of 568 tokens,
    inputs of 512, targets of 114). Span positions are stateless functions of ``(seed, batch
    index)``. The decoder input is the targets shifted right after the ``cls`` token (``<s>``);
    the loss is the cross-entropy over every target token; metrics are accuracy and perplexity.
    The tokenizer must have sentinels (``sentencepiece``).

    Args:
        noise_density: float. Share of the tokens dropped. Defaults to 0.15.
        mean_noise_span_length: float. Mean length of a dropped span. Defaults to 3.0.
        shuffle_buffer: int. Examples held for shuffling the training stream (0 or 1: no
            shuffling). Defaults to 10000.

    Example:
    >>> objective = SpanCorruptionObjective()
    >>> objective.lengths(512)
    (568, 114)
    """

    families = ("encoder_decoder",)
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"noise_density": "(0, 1)", "mean_noise_span_length": ">= 1",
              "shuffle_buffer": ">= 0"}
    #: The shortest ``backbone.sequence_length`` it trains.
    min_sequence_length = 4

    def __init__(self, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                 shuffle_buffer: int = 10000):
        check_limits(self.limits, locals(), "objective")
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.shuffle_buffer = shuffle_buffer

    def lengths(self, sequence_length):
        """``(raw row length, targets length)`` for inputs of ``sequence_length``."""
        from kplm.objectives.noising import span_corruption_raw_length
        if sequence_length < 4:
            raise ConfigError(f"backbone.sequence_length must be >= 4 for span_corruption, got "
                              f"{sequence_length}")
        return span_corruption_raw_length(sequence_length, self.noise_density,
                                          self.mean_noise_span_length)

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """A ``tf.data.Dataset`` of ``(x, y, sample_weight)`` batches for ``model.fit``: ``x``
        the ``EncoderDecoder`` inputs (encoder ``[batch, sequence_length]``, decoder ``[batch,
        targets length]``), ``y`` the targets, ``sample_weight`` float32 ones. Training streams
        are shuffled and repeat forever with a fixed batch size; validation streams are finite
        and deterministic.
        """
        import tensorflow as tf

        from kplm.objectives.noising import span_corruption, span_corruption_lengths

        raw_length, _ = self.lengths(sequence_length)
        num_spans = span_corruption_lengths(raw_length, self.noise_density,
                                            self.mean_noise_span_length)[1]
        sentinel_ids = getattr(tokenizer, "sentinel_ids", None) or []
        if len(sentinel_ids) < num_spans:
            raise ConfigError(f"span_corruption needs {num_spans} sentinel tokens per row of "
                              f"{sequence_length}; tokenizer '{tokenizer.name}' has "
                              f"{len(sentinel_ids)} (use tokenizer.name: sentencepiece, "
                              f"tokenizer.num_sentinels >= {num_spans})")
        batches = packed_batches(source_ds, tokenizer, raw_length, batch_size=batch_size,
                                 seed=seed, training=training, shuffle_buffer=self.shuffle_buffer)
        stream = 0 if training else 1
        end_id = tokenizer.special_id("sep")

        def corrupt(index, rows):
            out = span_corruption(
                rows, tf.stack([tf.cast(seed, tf.int64) * 2 + stream, index]),
                sentinel_ids=sentinel_ids[:num_spans], end_id=end_id,
                noise_density=self.noise_density,
                mean_noise_span_length=self.mean_noise_span_length)
            inputs = out["inputs"]
            lengths = tf.fill([tf.shape(inputs)[0]], tf.shape(inputs)[1])
            return teacher_forcing(inputs, lengths, out["targets"], tokenizer, sequence_length)

        return batches.enumerate().map(corrupt, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def build_model(self, backbone):
        """The ``kplm.models.Seq2SeqLM`` task model over ``backbone`` (compiles itself)."""
        return seq2seq_model(backbone, self.lengths(backbone.sequence_length)[1],
                             "span_corruption")

    def tokens_per_row(self, sequence_length):
        """Positions the model runs per row: the encoder's plus the decoder's."""
        return sequence_length + self.lengths(sequence_length)[1]


# --- shared with kplm.objectives.denoising --------------------------------------------------------
def packed_batches(source_ds, tokenizer, row_length, *, batch_size, seed, training,
                   shuffle_buffer):
    """Batches of int32 rows ``[batch, row_length]``: the texts tokenized in-graph and packed
    back to back (no separators, no padding; T5's ``reduce_concat_tokens`` + ``split_tokens``).
    Training: shuffled texts, repeated forever, full batches; validation: finite, in order."""
    from kplm.data.packing import pack_documents, tokenized_texts

    tokens = tokenized_texts(source_ds, tokenizer, shuffle_buffer=shuffle_buffer,
                             training=training, seed=seed)
    rows = pack_documents(tokens, row_length).unbatch()
    if training:
        # An empty stream would make repeat() spin forever: check for one row first.
        if not any(True for _ in rows.take(1)):
            raise DataError(f"too little text to fill one row of {row_length} tokens")
        rows = rows.repeat()
    return rows.batch(batch_size, drop_remainder=training)


def teacher_forcing(inputs, input_lengths, targets, tokenizer, sequence_length):
    """``(x, y, sample_weight)`` for ``Seq2SeqLM``: ``inputs`` (dense, real tokens in the first
    ``input_lengths``) padded to ``sequence_length``; decoder inputs are ``targets`` shifted
    right after the ``cls`` token (the decoder start); every target token has weight 1."""
    import tensorflow as tf

    pad_id, start_id = tokenizer.special_id("pad"), tokenizer.special_id("cls")
    batch = tf.shape(inputs)[0]
    inputs = inputs[:, :sequence_length]
    inputs = tf.pad(inputs, [[0, 0], [0, sequence_length - tf.shape(inputs)[1]]],
                    constant_values=pad_id)
    inputs = tf.ensure_shape(inputs, [None, sequence_length])
    encoder_mask = tf.cast(tf.range(sequence_length)[None, :] < input_lengths[:, None], tf.int32)
    inputs = tf.where(encoder_mask > 0, inputs, pad_id)
    decoder = tf.concat([tf.fill([batch, 1], start_id), targets[:, :-1]], axis=1)
    x = {"encoder_token_ids": inputs, "encoder_padding_mask": encoder_mask,
         "decoder_token_ids": decoder, "decoder_padding_mask": tf.ones_like(decoder)}
    return x, targets, tf.ones_like(targets, tf.float32)


def seq2seq_model(backbone, targets_length, objective):
    """``Seq2SeqLM(backbone)`` after checking the targets fit its decoder."""
    decoder_length = getattr(backbone, "decoder_sequence_length", None)
    if decoder_length is None:
        raise ConfigError(f"objective '{objective}' trains encoder-decoder backbones "
                          "(backbone.name: encoder_decoder)")
    if targets_length > decoder_length:
        raise ConfigError(f"backbone.decoder_sequence_length must be >= {targets_length} for "
                          f"{objective} targets with backbone.sequence_length "
                          f"{backbone.sequence_length}, got {decoder_length}")
    from kplm.models.seq2seq_lm import Seq2SeqLM
    return Seq2SeqLM(backbone)


@hookimpl
def register_objectives(register):
    register("span_corruption", SpanCorruptionObjective)
