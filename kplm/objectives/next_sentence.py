"""The ``next_sentence_prediction`` (BERT) and ``sentence_order_prediction`` (ALBERT) objectives."""
from kplm.checks import check_limits
from kplm.components import Objective
from kplm.errors import ConfigError, DataError
from kplm.hookspecs import hookimpl


class NextSentencePredictionObjective(Objective):
    """BERT's next-sentence prediction: is segment B the text that follows segment A?

    Needs documents (``text_files`` with ``format: documents``, or JSONL records of whole
    documents). Each document is split into sentences, grouped into chunks that fill a sequence,
    and cut into ``[CLS] A [SEP] B [SEP]`` pairs (``segment_ids`` 0 for A, 1 for B); half of the
    B segments are replaced by text from another document (label 1, "random"; 0 is "next").
    A two-way classifier on the backbone's pooled ``[CLS]`` output predicts the label;
    cross-entropy loss, accuracy metric. See ``kplm.objectives.sentence_pairs``.

    Combine it with masked LM, BERT's recipe, as ``objectives: [masked_lm,
    next_sentence_prediction]``: the pairs are built here and then masked.

    Args:
        shuffle_buffer: int. Documents held for shuffling the training stream. Defaults to 1000.
        partner_buffer: int. Chunks held for drawing the random B segments. Defaults to 1000.

    Example:
    >>> objective = NextSentencePredictionObjective()
    >>> objective.output_name
    'next_sentence'
    """

    families = ("encoder",)
    output_name = "next_sentence"
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"shuffle_buffer": ">= 1", "partner_buffer": ">= 1"}
    #: The shortest ``backbone.sequence_length`` it trains ([CLS] a [SEP] b [SEP]).
    min_sequence_length = 5
    builds_rows = True
    mode = "next_sentence"

    def __init__(self, shuffle_buffer: int = 1000, partner_buffer: int = 1000):
        check_limits(self.limits, locals(), "objective")
        self.shuffle_buffer = shuffle_buffer
        self.partner_buffer = partner_buffer

    # --- data -------------------------------------------------------------------------------
    def batches(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """Batches of packed pairs: ``token_ids``, ``segment_ids``, ``padding_mask`` and the
        ``<output_name>_label`` (int32 ``[batch]``). Training batches repeat forever."""
        import keras_hub
        import tensorflow as tf

        from kplm.objectives.sentence_pairs import segment_pairs

        if "text" not in source_ds.element_spec:
            raise DataError(f"objective '{self.output_name}' splits documents into sentences: "
                            "it needs a text source, not token ids (tfrecord shards)")
        specials = 2 + len(tokenizer.pair_separator)
        if sequence_length <= specials + 1:
            raise ConfigError(f"backbone.sequence_length ({sequence_length}) is too short for a "
                              "sentence pair")
        pairs = segment_pairs(
            source_ds.map(lambda example: example["text"]), tokenizer.build(),
            target_length=sequence_length - specials, mode=self.mode, seed=seed,
            training=training, shuffle_buffer=self.shuffle_buffer,
            partner_buffer=self.partner_buffer)
        if training:
            if not any(True for _ in pairs.take(1)):
                raise DataError("no document with two or more sentences to make a sentence pair "
                                "from (use text_files with format: documents)")
            pairs = pairs.repeat()
        pad_id = tokenizer.special_id("pad")
        packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=sequence_length, start_value=tokenizer.special_id("cls"),
            end_value=tokenizer.special_id("sep"), pad_value=pad_id,
            sep_value=[tokenizer.special_id(r) for r in tokenizer.pair_separator],
            truncate="round_robin")
        label_key = f"{self.output_name}_label"

        def pack(first, second, label):
            token_ids, segment_ids = packer((first, second))
            return {"token_ids": token_ids, "segment_ids": segment_ids,
                    "padding_mask": tf.cast(tf.not_equal(token_ids, pad_id), tf.int32),
                    label_key: label}

        return pairs.ragged_batch(batch_size, drop_remainder=training).map(
            pack, num_parallel_calls=tf.data.AUTOTUNE)

    def transform(self, features, index, tokenizer, *, seed, training, sequence_length):
        """Take the label out of the features: ``(features, label, weight 1)``."""
        import tensorflow as tf

        features = dict(features)
        label = features.pop(f"{self.output_name}_label")
        return features, label, tf.ones_like(label, tf.float32)

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """``(x, label, weight)`` batches when this objective is trained alone."""
        from kplm.objectives.combined import CombinedObjective
        return CombinedObjective([self]).dataset(
            source_ds, tokenizer, batch_size=batch_size, sequence_length=sequence_length,
            seed=seed, training=training)

    # --- model ------------------------------------------------------------------------------
    def model_inputs(self):
        return {}

    def head(self, backbone):
        """A two-way classifier over the pooled output: ``fn(backbone_outputs, inputs)``."""
        import keras

        from kplm.models.initializers import kernel_initializer
        dense = keras.layers.Dense(2, kernel_initializer=kernel_initializer(),
                                   dtype="float32", name=f"{self.output_name}_head")
        return lambda outputs, inputs: dense(outputs["pooled_output"])

    def loss(self):
        import keras
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def metrics(self):
        import keras
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def build_model(self, backbone):
        from kplm.objectives.combined import CombinedObjective
        return CombinedObjective([self]).build_model(backbone)

    def tokens_per_row(self, sequence_length):
        return sequence_length


class SentenceOrderPredictionObjective(NextSentencePredictionObjective):
    """ALBERT's sentence-order prediction: are segments A and B in their original order?

    Pairs are built as for next-sentence prediction, but B always follows A in the document; half
    of the pairs are swapped (label 1). Harder than next-sentence prediction, whose random
    segments are often told apart by topic alone.

    Args:
        shuffle_buffer: int. Documents held for shuffling the training stream. Defaults to 1000.
        partner_buffer: int. Unused (kept so both objectives take the same options).
            Defaults to 1000.

    Example:
    >>> SentenceOrderPredictionObjective().output_name
    'sentence_order'
    """

    output_name = "sentence_order"
    mode = "sentence_order"


@hookimpl
def register_objectives(register):
    register("next_sentence_prediction", NextSentencePredictionObjective)
    register("sentence_order_prediction", SentenceOrderPredictionObjective)
