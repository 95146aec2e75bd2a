"""The ``denoising`` objective: BART's pretraining on an encoder-decoder backbone."""
from kplm.checks import check_limits
from kplm.components import Objective
from kplm.errors import ConfigError
from kplm.hookspecs import hookimpl

#: Characters a sentence-ending piece consists of (after its word-start mark).
SENTENCE_END_MARKS = set(".!?")


class DenoisingObjective(Objective):
    """BART denoising: the encoder reads corrupted text, the decoder writes the original.

    The corpus is tokenized in-graph and packed into rows of ``sequence_length - 2`` tokens.
    Each row's sentences (ending in ``.`` ``!`` ``?``) are shuffled (``permute_sentences``),
    then text infilling masks ``mask_rate`` of its tokens in spans of Poisson(``poisson_lambda``)
    lengths, each span becoming one ``<mask>`` (a 0-length span inserts one). The encoder input
    is ``<s> noised </s>``, padded to ``sequence_length``; the targets are the original row then
    ``</s>``, the decoder input the same shifted right after ``<s>`` (targets of
    ``sequence_length - 1``). The noise is a stateless function of ``(seed, batch index)``. The
    loss is the cross-entropy over every target token; metrics are accuracy and perplexity.

    Args:
        mask_rate: float. Share of the tokens masked by text infilling (0: none).
            Defaults to 0.3.
        poisson_lambda: float. Mean length of a masked span. Defaults to 3.0.
        permute_sentences: bool. Shuffle the sentences of each row. Defaults to True.
        shuffle_buffer: int. Examples held for shuffling the training stream (0 or 1: no
            shuffling). Defaults to 10000.

    Example:
    >>> objective = DenoisingObjective(mask_rate=0.3)
    >>> objective.families, objective.targets_length(128)
    (('encoder_decoder',), 127)
    """

    families = ("encoder_decoder",)
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"mask_rate": "[0, 1)", "poisson_lambda": "> 0", "shuffle_buffer": ">= 0"}
    #: The shortest ``backbone.sequence_length`` it trains.
    min_sequence_length = 4

    def __init__(self, mask_rate: float = 0.3, poisson_lambda: float = 3.0,
                 permute_sentences: bool = True, shuffle_buffer: int = 10000):
        check_limits(self.limits, locals(), "objective")
        self.mask_rate = mask_rate
        self.poisson_lambda = poisson_lambda
        self.permute_sentences = permute_sentences
        self.shuffle_buffer = shuffle_buffer

    def targets_length(self, sequence_length):
        if sequence_length < 4:
            raise ConfigError(f"backbone.sequence_length must be >= 4 for denoising, got "
                              f"{sequence_length}")
        return sequence_length - 1

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """A ``tf.data.Dataset`` of ``(x, y, sample_weight)`` batches for ``model.fit``: ``x``
        the ``EncoderDecoder`` inputs (encoder ``[batch, sequence_length]``, decoder ``[batch,
        sequence_length - 1]``), ``y`` the targets, ``sample_weight`` float32 ones. Training
        streams are shuffled and repeat forever with a fixed batch size; validation streams
        are finite and deterministic.
        """
        import tensorflow as tf

        from kplm.objectives.noising import permute_sentences, text_infilling
        from kplm.objectives.span_corruption import packed_batches, teacher_forcing

        raw_length = self.targets_length(sequence_length) - 1
        batches = packed_batches(source_ds, tokenizer, raw_length, batch_size=batch_size,
                                 seed=seed, training=training, shuffle_buffer=self.shuffle_buffer)
        start_id, end_id = tokenizer.special_id("cls"), tokenizer.special_id("sep")
        mask_id = tokenizer.special_id("mask")
        end_ids = sentence_end_ids(tokenizer)
        stream = 0 if training else 1

        def noise(index, rows):
            seeds = tf.random.experimental.stateless_split(
                tf.stack([tf.cast(seed, tf.int64) * 2 + stream, index]), 2)
            source = rows
            if self.permute_sentences and end_ids:
                source = permute_sentences(source, seeds[0], end_ids=end_ids)
            if self.mask_rate > 0:
                source = text_infilling(source, seeds[1], mask_id=mask_id,
                                        mask_rate=self.mask_rate,
                                        poisson_lambda=self.poisson_lambda)["token_ids"]
            else:
                source = tf.RaggedTensor.from_tensor(source)
            # <s> noised </s>; in the rare row that 0-length spans made longer than the
            # encoder, the end is cut (</s> kept).
            source = source[:, :sequence_length - 2]
            batch = tf.shape(rows)[0]
            source = tf.concat([tf.fill([batch, 1], start_id), source,
                                tf.fill([batch, 1], end_id)], axis=1)
            lengths = tf.cast(source.row_lengths(), tf.int32)
            inputs = source.to_tensor(default_value=0, shape=[None, sequence_length])
            targets = tf.concat([rows, tf.fill([batch, 1], end_id)], axis=1)
            return teacher_forcing(inputs, lengths, targets, tokenizer, sequence_length)

        return batches.enumerate().map(noise, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def build_model(self, backbone):
        """The ``kplm.models.Seq2SeqLM`` task model over ``backbone`` (compiles itself)."""
        from kplm.objectives.span_corruption import seq2seq_model
        return seq2seq_model(backbone, self.targets_length(backbone.sequence_length),
                             "denoising")

    def tokens_per_row(self, sequence_length):
        """Positions the model runs per row: the encoder's plus the decoder's."""
        return sequence_length + self.targets_length(sequence_length)


def sentence_end_ids(tokenizer):
    """Ids of the tokens that end a sentence: ``.`` ``!`` ``?`` (or a run of them), with or
    without a word-start mark (``▁``, ``Ġ``)."""
    ends = []
    for i, token in enumerate(tokenizer.tokens):
        text = token.lstrip("\u2581\u0120")
        if text and set(text) <= SENTENCE_END_MARKS:
            ends.append(i)
    return ends


@hookimpl
def register_objectives(register):
    register("denoising", DenoisingObjective)
