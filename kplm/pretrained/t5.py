"""Hugging Face T5 checkpoints (v1.0 and v1.1) into kplm's ``T5EncoderDecoder``, with their
SentencePiece tokenizer.

A local directory with ``config.json`` (``model_type: t5``), ``model.safetensors`` or
``pytorch_model.bin`` (``T5Model`` or ``T5ForConditionalGeneration``) and ``spiece.model``.
v1.0 (``feed_forward_proj: relu``, tied embeddings: logits from the hidden states scaled by
``d_model ** -0.5``) and v1.1 (``gated-gelu``, a separate ``lm_head``) both load
(``kplm.models.t5``). The tokenizer is kplm's ``SentencePiece`` on ``spiece.model``: the
``<extra_id_0>`` ... ``<extra_id_99>`` sentinels get Hugging Face's ids (``<extra_id_0>`` the
last of them), so span corruption continues where T5 left off.

Generation: T5 starts decoding from ``<pad>`` (``decoder_start_token_id`` 0); kplm's seq2seq
head starts from ``<s>`` (appended to the vocabulary, in the checkpoint's padding rows) and
fine-tunes on ``<s> target </s>``. The parity test compares hidden states, and greedy
generation from T5's own start token (cached and uncached).

``export_t5`` writes a ``T5EncoderDecoder`` and its tokenizer back as a Hugging Face
``T5ForConditionalGeneration`` directory (the same tensor names, ``spiece.model`` without the
pieces kplm appended).

Example:
    backbone = kplm.pretrained.huggingface.load_backbone("models/t5-small")
    export_t5(backbone, tokenizer, "out/t5-hf")
"""
import numpy as np

from kplm.errors import ConfigError, DataError
from kplm.outputs import EXPORT_STAMP
from kplm.pretrained.hf_io import assign_weights, config_value, load_state_dict

#: ``model_type`` -> the family this module converts.
MODEL_TYPES = {"t5": "t5"}
#: What ``export_t5`` writes: ``overwrite`` replaces a directory holding only these.
EXPORT_NAMES = ("config.json", "model.safetensors", "spiece.model", "tokenizer_config.json",
                EXPORT_STAMP)
_ACTIVATIONS = {"relu": ("relu", False), "gated-gelu": ("gelu_approximate", True),
                "gated-relu": ("relu", True), "gated-silu": ("silu", True)}


def t5_arguments(config, path="."):
    """kplm ``T5EncoderDecoder`` arguments equivalent to a Hugging Face T5 config."""
    import os
    where = os.path.join(path, "config.json")
    projection = config.get("feed_forward_proj", "relu")
    if projection not in _ACTIVATIONS:
        raise ConfigError(f"{where}: feed_forward_proj {projection!r} is not supported "
                          f"({', '.join(_ACTIVATIONS)})")
    activation, gated = _ACTIVATIONS[projection]
    heads = config_value(config, "num_heads", path)
    return dict(vocabulary_size=config_value(config, "vocab_size", path),
                num_layers=config_value(config, "num_layers", path),
                num_decoder_layers=config.get("num_decoder_layers") or config["num_layers"],
                num_heads=heads, hidden_dim=config_value(config, "d_model", path),
                key_value_dim=config_value(config, "d_kv", path),
                intermediate_dim=config_value(config, "d_ff", path),
                sequence_length=int(config.get("n_positions") or 512),
                dropout=config.get("dropout_rate", 0.1), activation=activation, gated=gated,
                layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
                relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
                relative_attention_max_distance=config.get("relative_attention_max_distance",
                                                           128),
                tie_embeddings=bool(config.get("tie_word_embeddings", True)))


def weight_mapping(model):
    """``[(variable, hf_name, transpose)]`` for every ``T5EncoderDecoder`` variable."""
    out = [(model.token_embedding.embeddings, "shared.weight", False)]
    if not model.tie_embeddings:
        out.append((model.token_embedding.reverse_embeddings, "lm_head.weight", True))
    for side, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        out.append((stack.relative_attention_bias.embeddings,
                    f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False))
        out.append((stack.final_norm.scale, f"{side}.final_layer_norm.weight", False))
        for i, block in enumerate(stack.blocks):
            p = f"{side}.block.{i}.layer."
            attentions = [(block.self_attention, block.self_attention_norm, "0.SelfAttention")]
            if side == "decoder":
                attentions.append((block.cross_attention, block.cross_attention_norm,
                                   "1.EncDecAttention"))
            for attention, norm, name in attentions:
                for part, proj in (("query", "q"), ("key", "k"), ("value", "v")):
                    out.append((getattr(attention, part).kernel, f"{p}{name}.{proj}.weight",
                                True))
                out.append((attention.output_dense.kernel, f"{p}{name}.o.weight", True))
                out.append((norm.scale, f"{p}{name.split('.')[0]}.layer_norm.weight", False))
            ff = f"{p}{2 if side == 'decoder' else 1}."
            if block.feedforward.gated:
                out.append((block.feedforward.input_dense.kernel,
                            ff + "DenseReluDense.wi_0.weight", True))
                out.append((block.feedforward.gate_dense.kernel,
                            ff + "DenseReluDense.wi_1.weight", True))
            else:
                out.append((block.feedforward.input_dense.kernel, ff + "DenseReluDense.wi.weight",
                            True))
            out.append((block.feedforward.output_dense.kernel, ff + "DenseReluDense.wo.weight",
                        True))
            out.append((block.feedforward_norm.scale, ff + "layer_norm.weight", False))
    return out


def convert(config, path, dtype=None):
    """kplm ``T5EncoderDecoder`` built from the checked T5 ``config`` with the weights in
    ``path``."""
    from kplm.models.t5 import T5EncoderDecoder
    model = T5EncoderDecoder(**t5_arguments(config, path), dtype=dtype)
    state = load_state_dict(path)
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    missing = assign_weights(weight_mapping(model), state, path,
                             lambda array, transpose, shape: array.T if transpose else array)
    if missing:
        raise DataError(f"{path}: the checkpoint lacks {len(missing)} T5 weights, e.g. "
                        f"{missing[0]}")
    return model


def _original_pieces(tokenizer):
    """The SentencePiece model without what kplm appended to it (the sentinels, counted from
    ``<extra_id_{n-1}>``, then ``<s>`` / ``<mask>``): T5's ``spiece.model``, to which Hugging
    Face's tokenizer adds the sentinels itself."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    model = pb.ModelProto.FromString(tokenizer.proto)
    pieces = [p.piece for p in model.pieces]
    last = f"<extra_id_{tokenizer.num_sentinels - 1}>"
    if tokenizer.num_sentinels and last in pieces:
        cut = pieces.index(last)
        if pieces[cut:cut + tokenizer.num_sentinels] == [
                f"<extra_id_{i}>" for i in reversed(range(tokenizer.num_sentinels))]:
            del model.pieces[cut:]
    return model.SerializeToString()


def export_t5(model, tokenizer, output, *, overwrite=False, inputs=(), stamp=None):
    """Write a ``T5EncoderDecoder`` and its SentencePiece tokenizer as a Hugging Face
    ``T5ForConditionalGeneration`` directory ``output``, complete or not at all."""
    import json
    import os

    from safetensors.numpy import save_file

    from kplm.finite import require_finite
    from kplm.models.t5 import T5EncoderDecoder
    from kplm.outputs import atomic_output, check_output
    rule = dict(what="--output", overwrite=overwrite, inputs=list(inputs), names=EXPORT_NAMES)
    check_output(output, **rule)
    if not isinstance(model, T5EncoderDecoder):
        raise ConfigError(f"--format hf: not a T5 backbone ({type(model).__name__})")
    if getattr(tokenizer, "name", None) != "sentencepiece" or tokenizer.num_sentinels != 100:
        raise ConfigError("--format hf: T5's tokenizer is a SentencePiece model with 100 "
                          "sentinels; this run's is not")
    projection = {("relu", False): "relu", ("gelu_approximate", True): "gated-gelu",
                  ("relu", True): "gated-relu", ("silu", True): "gated-silu"}.get(
                      (model.activation, model.gated))
    if projection is None:
        raise ConfigError(f"--format hf: feed-forward {model.activation!r} "
                          f"{'gated' if model.gated else ''} has no T5 name")
    require_finite(model, output)
    state = {}
    for variable, name, transpose in weight_mapping(model):
        value = np.asarray(variable.numpy(), np.float32)
        state[name] = np.ascontiguousarray(value.T if transpose else value)
    for side in ("encoder", "decoder"):
        state[f"{side}.embed_tokens.weight"] = state["shared.weight"]
    config = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
              "vocab_size": model.vocabulary_size, "d_model": model.hidden_dim,
              "d_kv": model.key_value_dim, "d_ff": model.intermediate_dim,
              "num_layers": model.num_layers, "num_decoder_layers": model.num_decoder_layers,
              "num_heads": model.num_heads,
              "relative_attention_num_buckets": model.relative_attention_num_buckets,
              "relative_attention_max_distance": model.relative_attention_max_distance,
              "dropout_rate": model.dropout, "layer_norm_epsilon": model.layer_norm_epsilon,
              "feed_forward_proj": projection, "tie_word_embeddings": model.tie_embeddings,
              "pad_token_id": tokenizer.special_id("pad"),
              "eos_token_id": tokenizer.special_id("sep"), "decoder_start_token_id": 0,
              "is_encoder_decoder": True, "torch_dtype": "float32"}
    with atomic_output(output, **rule, stamp=stamp) as tmp:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 100,
                       "model_max_length": model.sequence_length}, f, indent=2)
        with open(os.path.join(tmp, "spiece.model"), "wb") as f:
            f.write(_original_pieces(tokenizer))
    return output
