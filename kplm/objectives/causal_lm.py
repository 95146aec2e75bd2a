"""The ``causal_lm`` objective: GPT's next-token prediction on a decoder backbone."""
from typing import Literal

from kplm.checks import check_limits
from kplm.components import Objective
from kplm.errors import ConfigError, shown
from kplm.hookspecs import hookimpl


class CausalLMObjective(Objective):
    """Next-token prediction: every position predicts the token after it, seeing only the
    tokens before it.

    Text is tokenized in-graph; each document becomes ``[CLS] tokens [SEP]`` (the tokenizer's
    ``cls`` role starts a text, ``sep`` ends it, as in ``kplm generate``). With ``packing:
    pack`` the documents are concatenated and cut into full rows of ``sequence_length + 1``
    tokens (no padding; a document runs on into the next row); with ``packing: pad`` each
    document gets a row of its own, truncated and padded. A row gives ``x = row[:-1]`` (with its
    ``padding_mask``), ``y = row[1:]``. Sample weights are 0 on padding and on ``[CLS]`` targets
    (always the token after ``[SEP]``: predicting it teaches nothing), 1 elsewhere; the loss is
    the cross-entropy averaged over weighted targets; metrics are accuracy and perplexity.

    Args:
        packing: ``"pack"`` (full rows of concatenated documents) or ``"pad"`` (one document per
            row). Defaults to ``"pack"``.
        shuffle_buffer: int. Documents held for shuffling the training stream (0 or 1: no
            shuffling). Defaults to 10000.

    Example:
    >>> objective = CausalLMObjective(packing="pad")
    >>> objective.families, objective.tokens_per_row(128)
    (('decoder',), 128)
    """

    families = ("decoder",)
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"shuffle_buffer": ">= 0"}
    #: The shortest ``backbone.sequence_length`` it trains.
    min_sequence_length = 2

    def __init__(self, packing: Literal["pack", "pad"] = "pack", shuffle_buffer: int = 10000):
        if packing not in ("pack", "pad"):
            raise ConfigError(f"objective.packing must be 'pack' or 'pad', got {shown(packing)}")
        check_limits(self.limits, locals(), "objective")
        self.packing = packing
        self.shuffle_buffer = shuffle_buffer

    # --- data -------------------------------------------------------------------------------
    def token_rows(self, source_ds, tokenizer, row_length, training=True, seed=0):
        """Raw examples -> int32 rows ``[row_length]`` and their int32 padding masks."""
        import keras_hub
        import tensorflow as tf

        from kplm.data.packing import tokenized_texts

        cls_id, sep_id, pad_id = (tokenizer.special_id(r) for r in ("cls", "sep", "pad"))
        tokens = tokenized_texts(source_ds, tokenizer, shuffle_buffer=self.shuffle_buffer,
                                 training=training, seed=seed)
        if self.packing == "pack":
            from kplm.data.packing import pack_documents
            rows = pack_documents(tokens, row_length, start_id=cls_id, end_id=sep_id)
            return rows.unbatch().map(lambda r: (r, tf.ones_like(r)))
        packer = keras_hub.layers.StartEndPacker(
            sequence_length=row_length, start_value=cls_id, end_value=sep_id,
            pad_value=pad_id, return_padding_mask=True)
        return tokens.map(packer).unbatch().map(lambda r, m: (r, tf.cast(m, tf.int32)))

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """A ``tf.data.Dataset`` of ``(x, y, sample_weight)`` batches for ``model.fit``:
        ``x = {"token_ids", "padding_mask"}`` ``[batch, sequence_length]``, ``y`` the next
        tokens, ``sample_weight`` float32. Training streams are shuffled and repeat forever
        with a fixed batch size; validation streams are finite and deterministic.
        """
        import tensorflow as tf

        rows = self.token_rows(source_ds, tokenizer, sequence_length + 1, training, seed)
        if training:
            # An empty stream would make repeat() spin forever: check for one row first.
            if not any(True for _ in rows.take(1)):
                from kplm.errors import DataError
                raise DataError(f"too little text to fill one sequence of {sequence_length} "
                                "tokens")
            rows = rows.repeat()
        cls_id = tokenizer.special_id("cls")

        def shift(row, mask):
            x = {"token_ids": row[:, :-1], "padding_mask": mask[:, :-1]}
            y = row[:, 1:]
            weight = tf.cast(mask[:, 1:], tf.float32) * tf.cast(y != cls_id, tf.float32)
            return x, y, weight

        batches = rows.batch(batch_size, drop_remainder=training)
        return batches.map(shift, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # --- model ------------------------------------------------------------------------------
    def build_model(self, backbone):
        """The ``kplm.models.CausalLM`` task model over ``backbone`` (compiles itself)."""
        from kplm.models.causal_lm import CausalLM
        return CausalLM(backbone)

    def tokens_per_row(self, sequence_length):
        return sequence_length


@hookimpl
def register_objectives(register):
    register("causal_lm", CausalLMObjective)
