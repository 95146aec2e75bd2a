"""Hugging Face GPT-2 checkpoints into kplm's ``Decoder`` (and its byte-level BPE tokenizer).

A local directory with ``config.json`` (``model_type: gpt2``), ``model.safetensors`` or
``pytorch_model.bin`` (``GPT2Model`` or ``GPT2LMHeadModel``: the ``transformer.`` prefix and the
tied ``lm_head`` are handled), ``vocab.json`` and ``merges.txt``. The language-model head is the
token embedding reversed, as in GPT-2, so ``kplm.models.causal_lm.CausalLM(decoder)`` generates
like the original. Nothing is downloaded. The files are read by ``kplm.pretrained.hf_io``;
``kplm.pretrained.huggingface`` dispatches here on ``model_type``.

Example:
    decoder = kplm.pretrained.huggingface.load_backbone("models/gpt2")
    tokenizer = load_tokenizer("models/gpt2")
"""
import os

import numpy as np

from kplm.errors import ConfigError, DataError, describe
from kplm.pretrained.hf_io import activation, load_state_dict, strip_prefix

#: ``model_type`` -> the family of decoders this module converts.
MODEL_TYPES = {"gpt2": "gpt2"}


def decoder_arguments(config, path="."):
    """kplm ``Decoder`` arguments equivalent to a Hugging Face GPT-2 config."""
    act = activation(config, "activation_function", "gelu_new", path)
    for key in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"):
        if key not in config:
            raise DataError(f"{path}/config.json: missing key '{key}'")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if config.get(flag):
            raise ConfigError(f"{path}/config.json: {flag} is not supported")
    hidden = config["n_embd"]
    return dict(vocabulary_size=config["vocab_size"], num_layers=config["n_layer"],
                num_heads=config["n_head"], hidden_dim=hidden,
                intermediate_dim=config.get("n_inner") or 4 * hidden,
                sequence_length=config["n_positions"], dropout=config.get("resid_pdrop", 0.1),
                activation=act,
                layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
                normalize_first=True)


def strip_task_prefix(state):
    """Drop the task-model prefix (``transformer.`` of ``GPT2LMHeadModel``) from the weights."""
    return strip_prefix(state, "h.0.ln_1.", "GPT-2 blocks")


def _weights(decoder, state):
    """``{variable path: numpy value}`` from a GPT-2 state dict (prefix stripped)."""
    heads, hidden = decoder.num_heads, decoder.hidden_dim
    dim = hidden // heads
    out = {"token_embedding/embeddings": state["wte.weight"],
           "position_embedding/embeddings": state["wpe.weight"][:decoder.sequence_length],
           "final_layer_norm/gamma": state["ln_f.weight"],
           "final_layer_norm/beta": state["ln_f.bias"]}
    for i in range(decoder.num_layers):
        k, h = f"transformer_layer_{i}/", f"h.{i}."
        # Conv1D stores [in, out]; c_attn's columns are [query | key | value]
        qkv = np.split(state[h + "attn.c_attn.weight"], 3, axis=1)
        qkv_bias = np.split(state[h + "attn.c_attn.bias"], 3)
        for name, kernel, bias in zip(("query", "key", "value"), qkv, qkv_bias):
            out[f"{k}self_attention/{name}/kernel"] = kernel.reshape(hidden, heads, dim)
            out[f"{k}self_attention/{name}/bias"] = bias.reshape(heads, dim)
        out[f"{k}self_attention/attention_output/kernel"] = \
            state[h + "attn.c_proj.weight"].reshape(heads, dim, hidden)
        out[f"{k}self_attention/attention_output/bias"] = state[h + "attn.c_proj.bias"]
        for keras_name, hf_name in (("self_attention_layer_norm", "ln_1"),
                                    ("feedforward_layer_norm", "ln_2")):
            out[f"{k}{keras_name}/gamma"] = state[h + hf_name + ".weight"]
            out[f"{k}{keras_name}/beta"] = state[h + hf_name + ".bias"]
        for keras_name, hf_name in (("feedforward_intermediate_dense", "mlp.c_fc"),
                                    ("feedforward_output_dense", "mlp.c_proj")):
            out[f"{k}{keras_name}/kernel"] = state[h + hf_name + ".weight"]
            out[f"{k}{keras_name}/bias"] = state[h + hf_name + ".bias"]
    return out


def convert_decoder(config, path, dtype=None):
    """kplm ``Decoder`` built from the Hugging Face GPT-2 ``config`` (the checked
    ``config.json`` of ``path``) with the weights in ``path``."""
    from kplm.models.decoder import Decoder

    state = strip_task_prefix(load_state_dict(path))
    decoder = Decoder(**decoder_arguments(config, path), dtype=dtype)
    variables = {w.path: w for w in decoder.weights}
    try:
        values = _weights(decoder, state)
    except KeyError as e:
        raise DataError(f"{path}: the checkpoint lacks the GPT-2 weight {e.args[0]}") from None
    except ValueError as e:
        raise DataError(f"{path}: a weight does not fit its config.json: {describe(e)}") from None
    for name, value in values.items():
        variable = variables[name]
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(f"{path}: weight for {name} has shape {value.shape}, which does not "
                            f"fit {tuple(variable.shape)} under its config.json")
        variable.assign(np.asarray(value).astype(variable.dtype))
    return decoder


def load_tokenizer(path):
    """GPT-2's byte-level BPE (``vocab.json`` + ``merges.txt``) as a kplm ``gpt2_bpe``
    tokenizer."""
    from kplm.tokenizers.byte_bpe import GPT2ByteBPE
    if not os.path.isfile(os.path.join(path, "vocab.json")):
        raise ConfigError(f"{path}: no vocab.json (+ merges.txt) for the GPT-2 tokenizer")
    return GPT2ByteBPE(vocabulary=path)
