"""fairseq's numbering of a SentencePiece model's pieces: XLM-R's and CamemBERT's token ids.

XLM-R (and CamemBERT) were trained with fairseq, whose dictionary puts its own special tokens
first and the SentencePiece pieces after them, so a model id is not the piece id:

=========== ============================================= ==================== =========
layout      ids 0..                                       piece ``i`` (``i>=k``) ``<mask>``
=========== ============================================= ==================== =========
xlm_roberta ``<s> <pad> </s> <unk>``                      ``i + 1`` (k = 3)    last
camembert   ``<s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED`` ``i + 4`` (k = 1) last
=========== ============================================= ==================== =========

SentencePiece's own ``<unk>`` becomes the ``<unk>`` of the prefix. This is what Hugging Face's
``XLMRobertaTokenizer`` / ``CamembertTokenizer`` do (their converters build the same list);
``tests/reference`` holds transformers' ids for a multilingual sample to compare with.

The numbering is here (no TensorFlow: ``kplm.testing`` writes tiny checkpoints with it); the
in-graph tokenizer is ``kplm.tokenizers.fairseq_layer.FairseqSentencePiece``.

Example:
>>> vocabulary(["<unk>", "<s>", "</s>", "\u2581a", "b"], "xlm_roberta")
['<s>', '<pad>', '</s>', '<unk>', '▁a', 'b', '<mask>']
>>> vocabulary(["<unk>", "<s>", "</s>", "\u2581a", "b"], "camembert")[3:]
['<unk>', '<unk>NOTUSED', '<s>', '</s>', '▁a', 'b', '<mask>']
"""
#: layout -> (the ids before the pieces, how many leading pieces they replace)
LAYOUTS = {
    "xlm_roberta": (("<s>", "<pad>", "</s>", "<unk>"), 3),
    "camembert": (("<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED"), 1),
}




def vocabulary(pieces, layout):
    """The model's tokens, by id, for a SentencePiece model's ``pieces`` in ``layout``."""
    prefix, skip = LAYOUTS[layout]
    return list(prefix) + list(pieces[skip:]) + ["<mask>"]


def id_mapping(layout, spm_unk_id, size):
    """The arguments of ``FairseqSentencePiece`` for ``layout``: the shift of ordinary pieces,
    SentencePiece's and the dictionary's ``<unk>``, the prefix length, the ``<mask>`` id
    (``size``: the vocabulary's length)."""
    prefix, skip = LAYOUTS[layout]
    return {"offset": len(prefix) - skip, "spm_unk_id": spm_unk_id,
            "unk_id": prefix.index("<unk>"), "num_prefix": len(prefix), "mask_id": size - 1}
