"""The ``masked_lm`` objective: BERT's dynamic masked language modelling."""
import math
from typing import Literal, Optional

from kplm.checks import check_limits
from kplm.components import Objective
from kplm.errors import ConfigError
from kplm.hookspecs import hookimpl


class MaskedLMObjective(Objective):
    """Masked language modelling with dynamic masking drawn in ``tf.data`` at every step.

    Text is tokenized in-graph, packed into full rows of ``sequence_length`` (examples separated by
    ``[SEP]``; no padding), then ``mask_rate`` of the tokens are chosen (whole words with
    ``whole_word``) and replaced 80/10/10 by ``[MASK]`` / a random token / themselves. The masks are
    stateless functions of ``(seed, batch index)``: the same run masks the same way every time. The
    loss is the cross-entropy averaged over the masked tokens only; metrics are masked-token
    accuracy and perplexity.

    Args:
        mask_rate: float. Share of (non-special) tokens to predict. Defaults to 0.15.
        mask_token_rate: float. Share of those replaced by ``[MASK]``. Defaults to 0.8.
        random_token_rate: float. Share replaced by a random token. Defaults to 0.1.
        whole_word: bool. Mask all pieces of a word together. Defaults to False.
        max_predictions: int or None. Prediction slots per row; None means
            ``ceil(mask_rate * sequence_length)``. Defaults to None.
        packing: ``"pack"`` (concatenate examples into full rows) or ``"pad"`` (one example per
            row, truncated and padded). Defaults to ``"pack"``.
        shuffle_buffer: int. Examples held for shuffling the training stream. Defaults to 10000.

    Example:
    >>> objective = MaskedLMObjective(mask_rate=0.15, whole_word=True)
    >>> objective.max_predictions_for(128)
    20
    """

    families = ("encoder",)
    output_name = "masked_lm"
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"mask_rate": "(0, 1)", "mask_token_rate": "[0, 1]", "random_token_rate": "[0, 1]",
              "max_predictions": ">= 1", "shuffle_buffer": ">= 0"}
    #: The shortest ``backbone.sequence_length`` it trains ([CLS], a token, [SEP]).
    min_sequence_length = 3
    builds_rows = False

    def __init__(
        self,
        mask_rate: float = 0.15,
        mask_token_rate: float = 0.8,
        random_token_rate: float = 0.1,
        whole_word: bool = False,
        max_predictions: Optional[int] = None,
        packing: Literal["pack", "pad"] = "pack",
        shuffle_buffer: int = 10000,
    ):
        check_limits(self.limits, locals(), "objective")
        if mask_token_rate + random_token_rate > 1:
            raise ConfigError("objective.mask_token_rate + objective.random_token_rate must be "
                              f"within [0, 1], got {mask_token_rate} + {random_token_rate}")
        self.mask_rate = mask_rate
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.whole_word = whole_word
        self.max_predictions = max_predictions
        self.packing = packing
        self.shuffle_buffer = shuffle_buffer

    def max_predictions_for(self, sequence_length):
        return self.max_predictions or max(1, math.ceil(self.mask_rate * sequence_length))

    # --- data -------------------------------------------------------------------------------
    def token_rows(self, source_ds, tokenizer, sequence_length, training=True, seed=0):
        """Raw examples -> int32 rows ``[sequence_length]`` (packed or padded) and padding masks."""
        import keras_hub
        import tensorflow as tf

        from kplm.data.packing import tokenized_texts

        cls_id, sep_id, pad_id = (tokenizer.special_id(r) for r in ("cls", "sep", "pad"))
        tokens = tokenized_texts(source_ds, tokenizer, shuffle_buffer=self.shuffle_buffer,
                                 training=training, seed=seed)
        if self.packing == "pack":
            from kplm.data.packing import pack_tokens
            rows = pack_tokens(tokens, sequence_length, cls_id, sep_id, separator_id=sep_id)
            return rows.unbatch().map(lambda r: (r, tf.ones_like(r)))
        packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length, start_value=cls_id, end_value=sep_id,
            pad_value=pad_id, return_padding_mask=True)
        return tokens.map(packer).unbatch().map(lambda r, m: (r, tf.cast(m, tf.int32)))

    def batches(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """Batches of unmasked rows: dicts of ``token_ids``, ``segment_ids`` (zeros) and
        ``padding_mask``. Training batches repeat forever (shuffled); validation is finite."""
        import tensorflow as tf

        rows = self.token_rows(source_ds, tokenizer, sequence_length, training, seed)
        if training:
            # An empty stream would make repeat() spin forever: check for one row first.
            if not any(True for _ in rows.take(1)):
                from kplm.errors import DataError
                raise DataError(f"too little text to fill one sequence of {sequence_length} "
                                "tokens")
            rows = rows.repeat()
        return rows.batch(batch_size, drop_remainder=training).map(
            lambda token_ids, padding_mask: {"token_ids": token_ids,
                                             "segment_ids": tf.zeros_like(token_ids),
                                             "padding_mask": padding_mask})

    def transform(self, features, index, tokenizer, *, seed, training, sequence_length):
        """Mask batch ``index`` of ``features``: ``(features with masked token_ids and
        mask_positions, original ids at those positions, their weights)``."""
        import tensorflow as tf

        from kplm.objectives.masking import mask_tokens

        stream = 0 if training else 1
        out = mask_tokens(
            features["token_ids"], tf.stack([tf.cast(seed, tf.int64) * 2 + stream, index]),
            mask_token_id=tokenizer.special_id("mask"), vocabulary_size=len(tokenizer.tokens),
            special_token_ids=tokenizer.special_token_ids,
            max_predictions=self.max_predictions_for(sequence_length),
            mask_rate=self.mask_rate, mask_token_rate=self.mask_token_rate,
            random_token_rate=self.random_token_rate,
            continuation_mask=tokenizer.continuation_mask() if self.whole_word else None)
        features = {**features, "token_ids": out["token_ids"],
                    "mask_positions": out["mask_positions"]}
        return features, out["mask_ids"], out["mask_weights"]

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """A ``tf.data.Dataset`` of ``(x, y, sample_weight)`` batches for ``model.fit``.

        Training streams repeat forever and are shuffled; validation streams are finite and
        deterministic (fixed masks), so validation metrics are comparable across runs.
        """
        import tensorflow as tf

        batches = self.batches(source_ds, tokenizer, batch_size=batch_size,
                               sequence_length=sequence_length, seed=seed, training=training)

        def mask(index, features):
            return self.transform(features, index, tokenizer, seed=seed, training=training,
                                  sequence_length=sequence_length)

        return batches.enumerate().map(mask, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    # --- model ------------------------------------------------------------------------------
    def build_model(self, backbone):
        """The ``kplm.models.MaskedLM`` task model over ``backbone`` (compiles itself)."""
        from kplm.models.masked_lm import MaskedLM
        return MaskedLM(backbone)

    def tokens_per_row(self, sequence_length):
        return sequence_length

    # --- combining with other objectives (kplm.objectives.combined) --------------------------
    def model_inputs(self):
        import keras
        return {"mask_positions": keras.Input(shape=(None,), dtype="int32",
                                              name="mask_positions")}

    def head(self, backbone):
        """The tied-embedding prediction head at the masked positions:
        ``fn(backbone_outputs, inputs)``."""
        import keras
        from keras_hub.layers import MaskedLMHead

        from kplm.models.initializers import kernel_initializer
        layer = MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size, token_embedding=backbone.token_embedding,
            intermediate_activation=keras.activations.gelu,
            layer_norm_epsilon=getattr(backbone, "layer_norm_epsilon", 1e-5),
            kernel_initializer=kernel_initializer(), dtype=backbone.dtype_policy,
            name="mlm_head")
        return lambda outputs, inputs: keras.ops.cast(
            layer(outputs["sequence_output"], inputs["mask_positions"]), "float32")

    def loss(self):
        from kplm.models.token_loss import token_loss
        return token_loss()

    def metrics(self):
        from kplm.models.token_loss import token_metrics
        return token_metrics()


@hookimpl
def register_objectives(register):
    register("masked_lm", MaskedLMObjective)
