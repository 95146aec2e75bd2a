"""Hugging Face BART checkpoints into kplm's ``EncoderDecoder`` (and back), with RoBERTa's
byte-level BPE tokenizer.

A local directory with ``config.json`` (``model_type: bart``), ``model.safetensors`` or
``pytorch_model.bin`` (``BartModel`` or ``BartForConditionalGeneration``: the ``model.``
prefix, the tied ``lm_head`` and a zero ``final_logits_bias`` are handled), ``vocab.json`` and
``merges.txt``. kplm's ``EncoderDecoder`` is BART's architecture: post-layer-norm
``TransformerEncoder`` / ``TransformerDecoder`` blocks, a layer norm on each side's embeddings,
learned positions (BART's table starts 2 rows in: its ``BartLearnedPositionalEmbedding`` adds
an offset of 2, so rows ``2..`` are positions ``0..``), one token embedding shared by both sides
and the LM head. What kplm's backbone cannot represent is refused naming the key:
``scale_embedding`` (mBART), ``normalize_before`` / ``add_final_layer_norm`` (mBART's pre-norm),
different encoder/decoder widths or head counts, a non-zero ``final_logits_bias``.

Generation: BART's own ``decoder_start_token_id`` is ``</s>``; kplm's seq2seq head starts with
``<s>`` (the ``cls`` role) and fine-tunes on ``<s> target </s>``. The parity test compares
hidden states, and greedy generation from the same start token (cached and uncached).

Example:
    backbone = kplm.pretrained.huggingface.load_backbone("models/bart-base")
    export_bart(backbone, tokenizer, "out/bart-hf")          # and back again
"""
import json
import os

import numpy as np

from kplm.errors import ConfigError, DataError
from kplm.outputs import EXPORT_STAMP
from kplm.pretrained.hf_io import (activation, assign_weights, config_value,
                                   hf_activation_name, load_state_dict)

#: ``model_type`` -> the family of encoder-decoders this module converts.
MODEL_TYPES = {"bart": "bart"}
#: BART's position table starts this many rows before position 0.
POSITION_OFFSET = 2
#: What ``export_bart`` writes: ``overwrite`` replaces a directory holding only these.
EXPORT_NAMES = ("config.json", "model.safetensors", "vocab.json", "merges.txt",
                "tokenizer_config.json", "special_tokens_map.json", EXPORT_STAMP)


def encoder_decoder_arguments(config, path="."):
    """kplm ``EncoderDecoder`` arguments equivalent to a Hugging Face BART config."""
    where = os.path.join(path, "config.json")
    for flag in ("scale_embedding", "normalize_before", "add_final_layer_norm",
                 "normalize_embedding_false", "add_bias_logits"):
        if config.get(flag):
            raise ConfigError(f"{where}: {flag} is not supported (kplm's encoder-decoder is "
                              "BART's post-layer-norm architecture with unscaled embeddings)")
    if config.get("normalize_embedding") is False:
        raise ConfigError(f"{where}: normalize_embedding false is not supported")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config.get(a) != config.get(b):
            raise ConfigError(f"{where}: {a} ({config.get(a)}) and {b} ({config.get(b)}) "
                              "differ; kplm's encoder-decoder uses one value for both")
    length = config_value(config, "max_position_embeddings", path)
    return dict(vocabulary_size=config_value(config, "vocab_size", path),
                num_layers=config_value(config, "encoder_layers", path),
                num_decoder_layers=config_value(config, "decoder_layers", path),
                num_heads=config_value(config, "encoder_attention_heads", path),
                hidden_dim=config_value(config, "d_model", path),
                intermediate_dim=config_value(config, "encoder_ffn_dim", path),
                sequence_length=length, decoder_sequence_length=length,
                dropout=config.get("dropout", 0.1),
                activation=activation(config, "activation_function", "gelu", path),
                layer_norm_epsilon=1e-5, normalize_first=False)


def weight_mapping(model):
    """``[(variable, hf_name, kind)]`` for every ``EncoderDecoder`` variable (kinds as in
    ``kplm.pretrained.bert.to_keras``; ``positions``: BART's offset table)."""
    v = {w.path: w for w in model.weights}
    out = [(v["token_embedding/embeddings"], "shared.weight", "copy")]
    for side, count in (("encoder", model.num_layers), ("decoder", model.num_decoder_layers)):
        out.append((v[f"{side}_position_embedding/embeddings"],
                    f"{side}.embed_positions.weight", "positions"))
        out.append((v[f"{side}_embeddings_layer_norm/gamma"], f"{side}.layernorm_embedding.weight",
                    "copy"))
        out.append((v[f"{side}_embeddings_layer_norm/beta"], f"{side}.layernorm_embedding.bias",
                    "copy"))
        attentions = ([("self_attention_layer", "self_attn")] if side == "encoder" else
                      [("self_attention", "self_attn"), ("cross_attention", "encoder_attn")])
        norms = [("self_attention_layer_norm", "self_attn_layer_norm"),
                 ("feedforward_layer_norm", "final_layer_norm")]
        if side == "decoder":
            norms.append(("cross_attention_layer_norm", "encoder_attn_layer_norm"))
        for i in range(count):
            k, h = f"{side}_layer_{i}/", f"{side}.layers.{i}."
            for keras_name, hf_name in attentions:
                for part, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
                    out.append((v[f"{k}{keras_name}/{part}/kernel"],
                                f"{h}{hf_name}.{proj}.weight", "qkv"))
                    out.append((v[f"{k}{keras_name}/{part}/bias"], f"{h}{hf_name}.{proj}.bias",
                                "qkv_bias"))
                out.append((v[f"{k}{keras_name}/attention_output/kernel"],
                            f"{h}{hf_name}.out_proj.weight", "attn_out"))
                out.append((v[f"{k}{keras_name}/attention_output/bias"],
                            f"{h}{hf_name}.out_proj.bias", "copy"))
            for keras_name, hf_name in norms:
                out.append((v[f"{k}{keras_name}/gamma"], f"{h}{hf_name}.weight", "copy"))
                out.append((v[f"{k}{keras_name}/beta"], f"{h}{hf_name}.bias", "copy"))
            for keras_name, hf_name in (("feedforward_intermediate_dense", "fc1"),
                                        ("feedforward_output_dense", "fc2")):
                out.append((v[f"{k}{keras_name}/kernel"], f"{h}{hf_name}.weight", "dense"))
                out.append((v[f"{k}{keras_name}/bias"], f"{h}{hf_name}.bias", "copy"))
    return out


def _model_state(state, path):
    """The ``BartModel`` weights of a ``BartModel`` or ``BartForConditionalGeneration``
    state dict (its ``model.`` prefix dropped; ``final_logits_bias`` checked to be zero)."""
    bias = state.get("final_logits_bias")
    if bias is not None and np.any(np.asarray(bias) != 0):
        raise DataError(f"{path}: final_logits_bias is not zero; kplm's seq2seq LM head has no "
                        "output bias")
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if "shared.weight" not in state:  # some checkpoints store only the encoder's copy
        for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if name in state:
                state["shared.weight"] = state[name]
                break
    return state


def convert_encoder_decoder(config, path, dtype=None):
    """kplm ``EncoderDecoder`` built from the checked BART ``config`` with the weights in
    ``path``."""
    from kplm.models.encoder_decoder import EncoderDecoder
    from kplm.pretrained.bert import to_keras
    model = EncoderDecoder(**encoder_decoder_arguments(config, path), dtype=dtype)
    state = _model_state(load_state_dict(path), path)
    missing = assign_weights(weight_mapping(model), state, path,
                             lambda array, kind, shape: to_keras(array, kind, shape,
                                                                 POSITION_OFFSET))
    if missing:
        raise DataError(f"{path}: the checkpoint lacks {len(missing)} BART weights, e.g. "
                        f"{missing[0]}")
    return model


def export_bart(model, tokenizer, output, *, overwrite=False, inputs=(), stamp=None):
    """Write a kplm ``EncoderDecoder`` (post-layer-norm, as BART) and its byte-level BPE
    tokenizer as a Hugging Face ``BartModel`` directory ``output`` (``config.json``,
    ``model.safetensors``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``),
    complete or not at all (``kplm.outputs.atomic_output``)."""
    from safetensors.numpy import save_file

    from kplm.finite import require_finite
    from kplm.outputs import atomic_output, check_output
    from kplm.pretrained.bert import to_hf
    rule = dict(what="--output", overwrite=overwrite, inputs=list(inputs), names=EXPORT_NAMES)
    check_output(output, **rule)
    from kplm.models.encoder_decoder import EncoderDecoder
    if not isinstance(model, EncoderDecoder) or model.normalize_first:
        raise ConfigError("--format hf: only a post-layer-norm encoder-decoder (BART's "
                          "architecture) exports as BART")
    if model.sequence_length != model.decoder_sequence_length:
        raise ConfigError("--format hf: BART has one position table for both sides; this model "
                          f"has {model.sequence_length} and {model.decoder_sequence_length} "
                          "positions")
    if getattr(tokenizer, "name", None) != "byte_bpe":
        raise ConfigError("--format hf: BART's tokenizer is a byte-level BPE (vocab.json + "
                          f"merges.txt); this run's is {getattr(tokenizer, 'name', '?')}")
    hf_activation = hf_activation_name(model.activation)
    require_finite(model, output)
    state = {}
    for variable, name, kind in weight_mapping(model):
        value = to_hf(np.asarray(variable.numpy(), np.float32), kind)
        if kind == "positions":  # BART's table: two rows before position 0
            value = np.concatenate([np.zeros((POSITION_OFFSET, value.shape[1]), np.float32),
                                    value])
        state[name] = np.ascontiguousarray(value)
    config = {"model_type": "bart", "architectures": ["BartModel"],
              "vocab_size": model.vocabulary_size, "d_model": model.hidden_dim,
              "encoder_layers": model.num_layers, "decoder_layers": model.num_decoder_layers,
              "encoder_attention_heads": model.num_heads,
              "decoder_attention_heads": model.num_heads,
              "encoder_ffn_dim": model.intermediate_dim, "decoder_ffn_dim": model.intermediate_dim,
              "max_position_embeddings": model.sequence_length,
              "activation_function": hf_activation, "dropout": model.dropout,
              "attention_dropout": 0.0, "activation_dropout": 0.0, "scale_embedding": False,
              "pad_token_id": tokenizer.special_id("pad"),
              "bos_token_id": tokenizer.special_id("cls"),
              "eos_token_id": tokenizer.special_id("sep"),
              "decoder_start_token_id": tokenizer.special_id("cls"),
              "forced_eos_token_id": tokenizer.special_id("sep"),
              "tie_word_embeddings": True, "torch_dtype": "float32"}
    vocab = {t: i for i, t in enumerate(tokenizer.tokens) if t}
    with atomic_output(output, **rule, stamp=stamp) as tmp:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for name, data in (("config.json", config), ("vocab.json", vocab),
                           ("tokenizer_config.json",
                            {"tokenizer_class": "BartTokenizer",
                             "model_max_length": model.sequence_length})):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2 if name != "vocab.json" else None,
                          ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(m + "\n" for m in tokenizer.merges))
    return output
