"""Hugging Face BERT-family encoders (``bert``, ``roberta`` / ``xlm-roberta`` / ``camembert``,
``distilbert``) into kplm's ``Encoder`` and its tokenizer, and kplm encoders back out as a
Hugging Face ``BertModel`` directory. The entry points that read a directory and dispatch on
its ``model_type`` are in ``kplm.pretrained.huggingface``; the files are read by
``kplm.pretrained.hf_io``.

Example:
>>> config = {"vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 2,
...           "hidden_size": 16, "intermediate_size": 32, "max_position_embeddings": 64}
>>> args = encoder_arguments("bert", config)
>>> args["num_layers"], args["sequence_length"], args["activation"]
(2, 64, 'gelu')
"""
import json
import os

import numpy as np

from kplm.errors import ConfigError, DataError
from kplm.outputs import EXPORT_STAMP
from kplm.pretrained.hf_io import activation, assign_weights, config_value, \
    fast_tokenizer_model, hf_activation_name, load_state_dict, read_tokenizer_config, \
    strip_prefix

#: ``model_type`` -> the family of encoders this module converts.
MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
               "camembert": "roberta", "distilbert": "distilbert"}


def encoder_arguments(family, config, path="."):
    """kplm ``Encoder`` arguments equivalent to a Hugging Face config of ``family``
    (``"bert"``, ``"roberta"`` or ``"distilbert"``)."""
    if family == "distilbert":
        args = dict(vocabulary_size=config_value(config, "vocab_size", path),
                    num_layers=config_value(config, "n_layers", path),
                    num_heads=config_value(config, "n_heads", path),
                    hidden_dim=config_value(config, "dim", path),
                    intermediate_dim=config_value(config, "hidden_dim", path),
                    sequence_length=config_value(config, "max_position_embeddings", path),
                    dropout=config.get("dropout", 0.1), num_segments=0, layer_norm_epsilon=1e-12)
        args["activation"] = activation(config, "activation", "gelu", path)
        return args
    length = config_value(config, "max_position_embeddings", path)
    if family == "roberta":
        length -= config.get("pad_token_id", 1) + 1  # positions start after the padding id
    types = config.get("type_vocab_size", 2)
    args = dict(vocabulary_size=config_value(config, "vocab_size", path),
                num_layers=config_value(config, "num_hidden_layers", path),
                num_heads=config_value(config, "num_attention_heads", path),
                hidden_dim=config_value(config, "hidden_size", path),
                intermediate_dim=config_value(config, "intermediate_size", path),
                sequence_length=length, dropout=config.get("hidden_dropout_prob", 0.1),
                num_segments=types, layer_norm_epsilon=config.get("layer_norm_eps", 1e-12))
    args["activation"] = activation(config, "hidden_act", "gelu", path)
    return args


def strip_task_prefix(state, family):
    """Drop the task-model prefix (``bert.``, ``roberta.``, ...) from the encoder's weights."""
    marker = "transformer.layer.0." if family == "distilbert" else "encoder.layer.0."
    return strip_prefix(state, marker, "encoder layers")


def weight_mapping(encoder, family):
    """``[(variable, hf_name, kind)]``: every encoder variable with its Hugging Face weight.

    ``kind``: ``copy``; ``dense`` (torch ``[out, in]`` is Keras ``[in, out]``); ``qkv``/``qkv_bias``
    (split over heads); ``attn_out`` (merged over heads); ``positions`` (RoBERTa's offset table).
    """
    v = {w.path: w for w in encoder.weights}
    out = []
    emb, ln = "embeddings.", "embeddings.LayerNorm."
    if family == "distilbert":
        layer_names = {"query": "attention.q_lin", "key": "attention.k_lin",
                       "value": "attention.v_lin", "attention_output": "attention.out_lin",
                       "self_attention_layer_norm": "sa_layer_norm",
                       "feedforward_intermediate_dense": "ffn.lin1",
                       "feedforward_output_dense": "ffn.lin2",
                       "feedforward_layer_norm": "output_layer_norm"}
        layer_prefix = "transformer.layer."
    else:
        layer_names = {"query": "attention.self.query", "key": "attention.self.key",
                       "value": "attention.self.value",
                       "attention_output": "attention.output.dense",
                       "self_attention_layer_norm": "attention.output.LayerNorm",
                       "feedforward_intermediate_dense": "intermediate.dense",
                       "feedforward_output_dense": "output.dense",
                       "feedforward_layer_norm": "output.LayerNorm"}
        layer_prefix = "encoder.layer."
    out.append((v["token_embedding/embeddings"], emb + "word_embeddings.weight", "copy"))
    out.append((v["position_embedding/embeddings"], emb + "position_embeddings.weight",
                "positions" if family == "roberta" else "copy"))
    if encoder.segment_embedding is not None:
        out.append((v["segment_embedding/embeddings"], emb + "token_type_embeddings.weight",
                    "copy"))
    out.append((v["embeddings_layer_norm/gamma"], ln + "weight", "copy"))
    out.append((v["embeddings_layer_norm/beta"], ln + "bias", "copy"))
    for i in range(encoder.num_layers):
        keras_prefix, hf_prefix = f"transformer_layer_{i}/", f"{layer_prefix}{i}."
        for name in ("query", "key", "value", "attention_output"):
            var = f"{keras_prefix}self_attention_layer/{name}/"
            kind = "attn_out" if name == "attention_output" else "qkv"
            out.append((v[var + "kernel"], hf_prefix + layer_names[name] + ".weight", kind))
            out.append((v[var + "bias"], hf_prefix + layer_names[name] + ".bias",
                        "copy" if kind == "attn_out" else "qkv_bias"))
        for name in ("feedforward_intermediate_dense", "feedforward_output_dense"):
            out.append((v[f"{keras_prefix}{name}/kernel"],
                        hf_prefix + layer_names[name] + ".weight", "dense"))
            out.append((v[f"{keras_prefix}{name}/bias"], hf_prefix + layer_names[name] + ".bias",
                        "copy"))
        for name in ("self_attention_layer_norm", "feedforward_layer_norm"):
            out.append((v[f"{keras_prefix}{name}/gamma"], hf_prefix + layer_names[name] + ".weight",
                        "copy"))
            out.append((v[f"{keras_prefix}{name}/beta"], hf_prefix + layer_names[name] + ".bias",
                        "copy"))
    if family != "distilbert":
        out.append((v["pooled_dense/kernel"], "pooler.dense.weight", "dense"))
        out.append((v["pooled_dense/bias"], "pooler.dense.bias", "copy"))
    return out


def to_keras(array, kind, shape, offset):
    """A Hugging Face weight of ``kind`` (see ``weight_mapping``) as the Keras variable of
    ``shape`` holds it (``offset``: RoBERTa's first position)."""
    if kind == "dense":
        return array.T
    if kind == "qkv":  # [heads*dim, hidden] -> [hidden, heads, dim]
        return array.T.reshape(shape)
    if kind == "qkv_bias":
        return array.reshape(shape)
    if kind == "attn_out":  # [hidden, heads*dim] -> [heads, dim, hidden]
        return array.T.reshape(shape)
    if kind == "positions":
        return array[offset:offset + shape[0]]
    return array


def to_hf(array, kind):
    """A Keras variable's value as the Hugging Face weight of ``kind`` holds it."""
    if kind == "dense":
        return array.T
    if kind == "qkv":
        return array.reshape(array.shape[0], -1).T
    if kind == "qkv_bias":
        return array.reshape(-1)
    if kind == "attn_out":
        return array.reshape(-1, array.shape[-1]).T
    return array


def convert_encoder(family, config, path, dtype=None):
    """kplm ``Encoder`` built from the Hugging Face ``config`` of ``family`` (the checked
    ``config.json`` of ``path``) with the weights in ``path``."""
    from kplm.models.encoder import Encoder
    args = encoder_arguments(family, config, path)
    state = strip_task_prefix(load_state_dict(path), family)
    encoder = Encoder(**args, dtype=dtype)
    offset = config.get("pad_token_id", 1) + 1 if family == "roberta" else 0
    missing = assign_weights(weight_mapping(encoder, family), state, path,
                             lambda array, kind, shape: to_keras(array, kind, shape, offset))
    if [m for m in missing if not m.startswith("pooler.")]:
        raise DataError(f"{path}: the checkpoint lacks {len(missing)} encoder weights, e.g. "
                        f"{missing[0]}")
    return encoder


# --- masked-LM head -------------------------------------------------------------------------
#: family -> the Hugging Face names of its masked-LM head: the transform's dense layer, its layer
#: norm, and the output bias (first name found wins); the decoder matrix is the tied embedding.
MLM_HEAD_NAMES = {
    "bert": ("cls.predictions.transform.dense.", "cls.predictions.transform.LayerNorm.",
             ("cls.predictions.bias", "cls.predictions.decoder.bias")),
    "roberta": ("lm_head.dense.", "lm_head.layer_norm.", ("lm_head.bias", "lm_head.decoder.bias")),
    "distilbert": ("vocab_transform.", "vocab_layer_norm.", ("vocab_projector.bias",)),
}


def masked_lm_head_weights(family, config, state, path="."):
    """``(weights, note)``: the checkpoint's masked-LM head as kplm's
    ``keras_hub.layers.MaskedLMHead`` holds it (``{"intermediate_dense/kernel", ".../bias",
    "intermediate_layer_norm/gamma", ".../beta", "output_bias": array}``), or ``None`` and why
    not (a ``BertModel`` checkpoint has no head; a head whose activation is not the exact GELU
    kplm's head computes is left out).

    Example:
    >>> import numpy as np
    >>> state = {"cls.predictions.transform.dense.weight": np.eye(2, dtype="float32"),
    ...          "cls.predictions.transform.dense.bias": np.zeros(2, "float32"),
    ...          "cls.predictions.transform.LayerNorm.weight": np.ones(2, "float32"),
    ...          "cls.predictions.transform.LayerNorm.bias": np.zeros(2, "float32"),
    ...          "cls.predictions.bias": np.zeros(5, "float32")}
    >>> weights, note = masked_lm_head_weights("bert", {"hidden_act": "gelu"}, state)
    >>> note, weights["intermediate_dense/kernel"].shape, weights["output_bias"].shape
    ('imported (cls.*)', (2, 2), (5,))
    """
    dense, norm, biases = MLM_HEAD_NAMES[family]
    found = {}
    for key, names in (("intermediate_dense/kernel", [dense + "weight"]),
                       ("intermediate_dense/bias", [dense + "bias"]),
                       ("intermediate_layer_norm/gamma", [norm + "weight", norm + "gamma"]),
                       ("intermediate_layer_norm/beta", [norm + "bias", norm + "beta"]),
                       ("output_bias", list(biases))):
        name = next((n for n in names if n in state), None)
        if name is not None:
            found[key] = np.asarray(state[name], np.float32)
    if not found:
        return None, "new (the checkpoint holds none)"
    if len(found) < 5:
        raise DataError(f"{path}: the checkpoint's masked-LM head is incomplete: it has "
                        f"{', '.join(sorted(found))} of the transform, layer norm and bias")
    act_key = {"bert": "hidden_act", "distilbert": "activation"}.get(family)
    act = config.get(act_key, "gelu") if act_key else "gelu"  # RoBERTa's lm_head: always gelu
    if act != "gelu":
        return None, (f"new (the checkpoint's head uses {act!r}; kplm's masked-LM head computes "
                      "the exact GELU)")
    found["intermediate_dense/kernel"] = found["intermediate_dense/kernel"].T
    return found, f"imported ({dense.split('.')[0]}.*)" if family != "distilbert" else \
        "imported (vocab_transform, vocab_layer_norm, vocab_projector.bias)"


def assign_masked_lm_heads(model, weights, path="."):
    """Copy ``weights`` (from ``masked_lm_head_weights``) into the masked-LM heads of ``model``
    (the ``MaskedLMHead`` named ``mlm_head`` of a ``MaskedLM``, or of the masked-LM objective in
    a ``Pretrainer``; other heads, such as an ELECTRA generator's, are left alone); returns how
    many. Shapes are checked before anything is assigned."""
    from keras_hub.layers import MaskedLMHead
    heads = [layer for layer in model.layers
             if isinstance(layer, MaskedLMHead) and layer.name == "mlm_head"]
    plan = []
    for head in heads:
        variables = {w.path.split(head.name + "/", 1)[-1]: w for w in head.weights}
        for key, value in weights.items():
            variable = variables.get(key)
            if variable is None or tuple(variable.shape) != value.shape:
                raise DataError(
                    f"{path}: the masked-LM head weight for {key} has shape {value.shape}, which "
                    f"does not fit the model's "
                    f"{tuple(variable.shape) if variable is not None else 'none'}")
            plan.append((variable, value))
    for variable, value in plan:
        variable.assign(value.astype(variable.dtype))
    return len(heads)


# --- tokenizer -------------------------------------------------------------------------------
def load_tokenizer(family, path):
    """The tokenizer of the ``family`` checkpoint in ``path``: RoBERTa's byte-level BPE, else a
    ``WordPiece`` from ``vocab.txt`` or ``tokenizer.json`` with the lowercasing and accent
    stripping of its ``tokenizer_config.json``."""
    from kplm.tokenizers.wordpiece import WordPiece
    if family == "roberta":
        return _load_byte_bpe(path)
    options = read_tokenizer_config(path)
    lowercase = bool(options.get("do_lower_case", True))
    strip_accents = options.get("strip_accents")
    strip_accents = lowercase if strip_accents is None else bool(strip_accents)
    vocab = os.path.join(path, "vocab.txt")
    if os.path.isfile(vocab):
        return WordPiece(vocabulary=vocab, lowercase=lowercase, strip_accents=strip_accents)
    model = fast_tokenizer_model(path, "WordPiece")
    if model is not None:
        tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
        tokenizer = WordPiece(lowercase=lowercase, strip_accents=strip_accents)
        tokenizer.tokens = tokens
        return tokenizer
    raise ConfigError(f"{path}: no vocab.txt or tokenizer.json")


def _load_byte_bpe(path):
    """RoBERTa's byte-level BPE from ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``."""
    from kplm.tokenizers.byte_bpe import ByteBPE
    if os.path.isfile(os.path.join(path, "vocab.json")):
        return ByteBPE(vocabulary=path)
    model = fast_tokenizer_model(path, "BPE")
    if model is not None:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return ByteBPE().set_vocabulary(model["vocab"], merges)
    raise ConfigError(f"{path}: no vocab.json + merges.txt or tokenizer.json")


# --- export ----------------------------------------------------------------------------------
#: What ``export_bert`` writes: ``overwrite`` replaces a directory holding only these.
HF_EXPORT_NAMES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json", EXPORT_STAMP)


def export_bert(encoder, tokenizer, directory, *, overwrite=False, inputs=(), stamp=None):
    """Write ``encoder`` and ``tokenizer`` as a Hugging Face ``BertModel`` directory
    (``config.json``, ``model.safetensors``, ``vocab.txt``, ``tokenizer_config.json``,
    ``special_tokens_map.json``), complete or not at all (``kplm.outputs.atomic_output``;
    ``overwrite`` replaces a previous export, never other files; ``inputs``: paths it may not
    replace). An encoder with a non-finite weight is refused before anything is written.

    Example:
        export_bert(kplm.load_backbone("runs/bert_tiny_mlm"),
                    kplm.load_tokenizer("runs/bert_tiny_mlm"), "out/bert-tiny-hf")
    """
    from safetensors.numpy import save_file

    from kplm.finite import require_finite
    from kplm.models.encoder import Encoder
    from kplm.outputs import atomic_output, check_output
    rule = dict(what="--output", overwrite=overwrite, inputs=inputs, names=HF_EXPORT_NAMES)
    check_output(directory, **rule)
    if not isinstance(encoder, Encoder):
        raise ConfigError(f"the Hugging Face export writes BERT encoders; this backbone is a "
                          f"{type(encoder).__name__}")
    tokenizer.require_word_pieces("the Hugging Face BERT export")
    if encoder.normalize_first:
        raise ConfigError("a pre-layer-norm encoder (normalize_first) has no BertModel "
                          "equivalent; export needs BERT's post-layer-norm blocks")
    hf_activation = hf_activation_name(encoder.activation)
    require_finite(encoder, directory)
    state = {}
    for variable, name, kind in weight_mapping(encoder, "bert"):
        state[name] = np.ascontiguousarray(
            to_hf(np.asarray(variable.numpy(), dtype=np.float32), kind))
    num_segments = encoder.num_segments
    if encoder.segment_embedding is None:  # DistilBERT-style: an all-zero single type
        num_segments = 1
        state["embeddings.token_type_embeddings.weight"] = np.zeros(
            (1, encoder.hidden_dim), np.float32)
    config = {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": encoder.vocabulary_size, "hidden_size": encoder.hidden_dim,
        "num_hidden_layers": encoder.num_layers, "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.intermediate_dim, "hidden_act": hf_activation,
        "hidden_dropout_prob": encoder.dropout, "attention_probs_dropout_prob": encoder.dropout,
        "max_position_embeddings": encoder.sequence_length, "type_vocab_size": num_segments,
        "layer_norm_eps": encoder.layer_norm_epsilon, "initializer_range": 0.02,
        "pad_token_id": tokenizer.token_to_id("[PAD]"),
        "position_embedding_type": "absolute", "torch_dtype": "float32",
    }
    tok_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
                  "strip_accents": tokenizer.strip_accents, "tokenize_chinese_chars": True,
                  "model_max_length": encoder.sequence_length,
                  "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}
    specials = {k: tok_config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token",
                                             "mask_token")}
    with atomic_output(directory, **rule, stamp=stamp) as tmp:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for name, data in (("config.json", config), ("tokenizer_config.json", tok_config),
                           ("special_tokens_map.json", specials)):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
        with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(tokenizer.tokens) + "\n")
    return directory
