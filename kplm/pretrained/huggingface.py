"""Hugging Face checkpoints in and out: the entry points. A local model directory is read into a
kplm backbone and tokenizer (BERT-family encoders into kplm's ``Encoder``, GPT-2 into its
``Decoder``), and kplm encoders are written back out as a Hugging Face ``BertModel`` directory.

A directory holds ``config.json``, the weights as ``model.safetensors`` (preferred) or
``pytorch_model.bin`` (read without running pickled code, see ``kplm.pretrained.torch_zip``),
and the WordPiece vocabulary as ``vocab.txt`` or ``tokenizer.json``. Supported ``model_type``:
``bert`` (BERT, MiniLM, ...), ``roberta`` (with its byte-level BPE tokenizer from
``vocab.json`` + ``merges.txt``), ``xlm-roberta`` and ``camembert`` (SentencePiece
``sentencepiece.bpe.model`` numbered as fairseq does, ``kplm.tokenizers.fairseq``),
``distilbert``, ``gpt2`` (a decoder), ``bart`` (an encoder-decoder, ``kplm.pretrained.bart``)
and ``t5`` (v1.0 and v1.1, ``kplm.pretrained.t5``).
Nothing is downloaded.

Layout (as keras-hub's ``utils/transformers``): ``kplm.pretrained.hf_io`` reads the files and
holds what the converters share; one converter module per family, ``kplm.pretrained.bert``
(encoders, and the export) and ``kplm.pretrained.gpt2`` (decoders); this module reads a
directory's ``model_type`` and dispatches to them.

Example:
    backbone = load_encoder("models/all-MiniLM-L6-v2")
    tokenizer = load_tokenizer("models/all-MiniLM-L6-v2")
    export_bert(backbone, tokenizer, "out/minilm-hf")          # and back again
"""
import os

from kplm.errors import ConfigError, shown
from kplm.finite import require_finite_input
from kplm.pretrained import bart, bert, gpt2, t5
# Re-exported: what callers import from here.
from kplm.pretrained.bert import HF_EXPORT_NAMES, encoder_arguments, export_bert  # noqa: F401
from kplm.pretrained.gpt2 import decoder_arguments  # noqa: F401
from kplm.pretrained.hf_io import (WEIGHT_FILES, is_checkpoint, load_state_dict,  # noqa: F401
                                   read_config_json)

__all__ = ["FAMILIES", "HF_EXPORT_NAMES", "WEIGHT_FILES", "backbone_arguments", "backbone_family",
           "decoder_arguments", "encoder_arguments", "export_bert", "initialize_masked_lm_head",
           "is_checkpoint",
           "load_backbone", "load_encoder", "load_state_dict", "load_tokenizer", "read_config"]

#: ``model_type`` -> family: the converter (``bert``, ``roberta``, ``distilbert``: encoders, in
#: ``kplm.pretrained.bert``; ``gpt2``: a decoder, in ``kplm.pretrained.gpt2``).
FAMILIES = {**bert.MODEL_TYPES, **gpt2.MODEL_TYPES, **bart.MODEL_TYPES, **t5.MODEL_TYPES}
#: ``model_type`` -> the fairseq id layout of its ``sentencepiece.bpe.model``
#: (``kplm.tokenizers.fairseq``).
FAIRSEQ_LAYOUTS = {"xlm-roberta": "xlm_roberta", "camembert": "camembert"}


def read_config(path):
    """``(family, config dict)`` of the checkpoint in ``path``; refuses unsupported models."""
    config = read_config_json(path)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ConfigError(f"{os.path.join(path, 'config.json')}: model_type {shown(model_type)} "
                          f"is not supported; kplm imports {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type], config


def backbone_family(family):
    """The kplm backbone family (``"encoder"`` or ``"decoder"``) a checkpoint ``family`` (as
    ``read_config`` gives it) is imported as."""
    if family in bart.MODEL_TYPES.values() or family in t5.MODEL_TYPES.values():
        return "encoder_decoder"
    return "decoder" if family in gpt2.MODEL_TYPES.values() else "encoder"


def backbone_arguments(family, config, path="."):
    """The kplm backbone arguments equivalent to the Hugging Face ``config`` of ``family``
    (``Decoder`` arguments for GPT-2, ``Encoder`` arguments otherwise)."""
    if backbone_family(family) == "decoder":
        return decoder_arguments(config, path)
    if family == "t5":
        return t5.t5_arguments(config, path)
    if backbone_family(family) == "encoder_decoder":
        return bart.encoder_decoder_arguments(config, path)
    return encoder_arguments(family, config, path)


def load_encoder(path, dtype=None):
    """kplm ``Encoder`` with the weights of the Hugging Face checkpoint in ``path``.

    Example:
        encoder = load_encoder("models/all-MiniLM-L6-v2")
    """
    family, config = read_config(path)
    if backbone_family(family) != "encoder":
        raise ConfigError(f"{path}: a {family} checkpoint is not an encoder; load it with "
                          "load_backbone (or kplm.load_pretrained)")
    return require_finite_input(bert.convert_encoder(family, config, path, dtype=dtype), path)


def load_backbone(path, dtype=None):
    """The backbone of the checkpoint in ``path``: a kplm ``Encoder`` for the BERT family, a
    ``Decoder`` for GPT-2 (``kplm.pretrained.gpt2``)."""
    family, config = read_config(path)
    if backbone_family(family) == "decoder":
        backbone = gpt2.convert_decoder(config, path, dtype=dtype)
    elif family == "t5":
        backbone = t5.convert(config, path, dtype=dtype)
    elif backbone_family(family) == "encoder_decoder":
        backbone = bart.convert_encoder_decoder(config, path, dtype=dtype)
    else:
        backbone = bert.convert_encoder(family, config, path, dtype=dtype)
    return require_finite_input(backbone, path)


def initialize_masked_lm_head(path, model):
    """Copy the masked-LM head of the BERT-family checkpoint in ``path`` (``cls.predictions.*``,
    RoBERTa's ``lm_head.*``, DistilBERT's ``vocab_*``) into ``model``'s ``MaskedLMHead`` layers,
    so that continued pretraining starts from the trained head; returns a one-line note of what
    was done (the head stays new when the checkpoint has none, e.g. a ``BertModel``)."""
    family, config = read_config(path)
    if backbone_family(family) != "encoder":
        return None
    weights, note = bert.masked_lm_head_weights(family, config, load_state_dict(path), path)
    if weights is not None and not bert.assign_masked_lm_heads(model, weights, path):
        return None  # the model has no masked-LM head (another objective)
    if weights is not None:  # a NaN in the head: the file's fault, not the training's
        require_finite_input(model, path)
    return f"masked-LM head: {note}"


def load_tokenizer(path):
    """The kplm tokenizer of the checkpoint in ``path``: ``WordPiece`` from ``vocab.txt`` or
    ``tokenizer.json`` (with the lowercasing and accent stripping of its
    ``tokenizer_config.json``) for BERT and DistilBERT, ``byte_bpe`` for RoBERTa, ``gpt2_bpe``
    for GPT-2."""
    family, config = read_config(path)
    if backbone_family(family) == "decoder":
        return gpt2.load_tokenizer(path)
    if family == "t5":  # SentencePiece with Hugging Face's sentinel ids
        from kplm.tokenizers.sentencepiece import SentencePiece
        if not os.path.isfile(os.path.join(path, "spiece.model")):
            raise ConfigError(f"{path}: no spiece.model (T5's SentencePiece model)")
        return SentencePiece(vocabulary=os.path.join(path, "spiece.model"))
    if backbone_family(family) == "encoder_decoder":  # BART: RoBERTa's byte-level BPE
        return bert.load_tokenizer("roberta", path)
    layout = FAIRSEQ_LAYOUTS.get(config.get("model_type"))
    model = os.path.join(path, "sentencepiece.bpe.model")
    if layout and os.path.isfile(model):
        from kplm.tokenizers.sentencepiece import SentencePiece
        return SentencePiece(vocabulary=model, id_layout=layout)
    return bert.load_tokenizer(family, path)
