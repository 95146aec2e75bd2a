"""The in-graph tokenizer of a fairseq dictionary (``kplm.tokenizers.fairseq``): XLM-R's and
CamemBERT's ids from a SentencePiece model.

keras_hub's ``XLMRobertaTokenizer`` maps XLM-R's ids in-graph, but not CamemBERT's (offset 4,
five ids before the pieces), and does it by overriding a private method;
``FairseqSentencePiece`` wraps the public ``tokenize`` / ``detokenize`` of keras_hub's
``SentencePieceTokenizer`` with a shift and one ``tf.where``, for both.
"""
import keras_hub
import tensorflow as tf


def _map(ids, fn):
    if isinstance(ids, tf.RaggedTensor):
        return tf.ragged.map_flat_values(fn, ids)
    return fn(ids)


class FairseqSentencePiece(keras_hub.tokenizers.SentencePieceTokenizer):
    """A SentencePiece tokenizer whose ids follow a fairseq dictionary (see the module).

    Args:
        proto: the serialized SentencePiece model (unchanged).
        offset: int. Model id minus piece id for ordinary pieces.
        spm_unk_id: int. SentencePiece's ``<unk>`` piece id.
        unk_id: int. The dictionary's ``<unk>`` id.
        num_prefix: int. How many dictionary ids come before the pieces.
        mask_id: int. The ``<mask>`` id (the last).
    """

    def __init__(self, proto, offset, spm_unk_id, unk_id, num_prefix, mask_id, **kwargs):
        self.offset, self.spm_unk_id, self.unk_id = offset, spm_unk_id, unk_id
        self.num_prefix, self.mask_id = num_prefix, mask_id
        super().__init__(proto=proto, **kwargs)

    def tokenize(self, inputs):
        ids = super().tokenize(inputs)
        if not isinstance(ids, (tf.Tensor, tf.RaggedTensor)):
            ids = tf.ragged.constant(ids, dtype=tf.int32)
        return _map(ids, lambda v: tf.where(v == self.spm_unk_id, tf.cast(self.unk_id, v.dtype),
                                            v + tf.cast(self.offset, v.dtype)))

    def detokenize(self, inputs):
        ids = inputs if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)) else tf.ragged.constant(
            inputs, dtype=tf.int32)
        unk = tf.constant(self.unk_id, ids.dtype)
        keep = _map(ids, lambda v: (v >= self.num_prefix) & (v != self.mask_id) | (v == unk))
        kept = tf.ragged.boolean_mask(ids, keep) if ids.shape.rank > 1 else tf.boolean_mask(
            ids, keep)
        pieces = _map(kept, lambda v: tf.where(v == unk, tf.cast(self.spm_unk_id, v.dtype),
                                               v - tf.cast(self.offset, v.dtype)))
        return super().detokenize(pieces)

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "spm_unk_id": self.spm_unk_id,
                "unk_id": self.unk_id, "num_prefix": self.num_prefix, "mask_id": self.mask_id}
