"""Hugging Face checkpoints in and out: BERT-family encoders from a local directory into kplm's
``Encoder``, and kplm encoders back out as a Hugging Face ``BertModel`` directory.

A directory holds ``config.json``, the weights as ``model.safetensors`` (preferred) or
``pytorch_model.bin`` (read without running pickled code, see ``kplm.pretrained.torch_zip``),
and the WordPiece vocabulary as ``vocab.txt`` or ``tokenizer.json``. Supported ``model_type``:
``bert`` (BERT, MiniLM, ...), ``roberta`` / ``xlm-roberta`` (with their byte-level BPE
tokenizer from ``vocab.json`` + ``merges.txt``), ``distilbert``, and ``gpt2`` (a decoder, see
``kplm.pretrained.gpt2``). Nothing is downloaded.

Example:
    backbone = load_encoder("models/all-MiniLM-L6-v2")
    tokenizer = load_tokenizer("models/all-MiniLM-L6-v2")
    export_bert(backbone, tokenizer, "out/minilm-hf")          # and back again
"""
import json
import os

import numpy as np

from kplm.errors import ConfigError, DataError, describe, shown

FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
            "camembert": "roberta", "distilbert": "distilbert", "gpt2": "gpt2"}
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
                "gelu_pytorch_tanh": "gelu_approximate", "gelu_fast": "gelu_approximate",
                "relu": "relu"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_checkpoint(path):
    """True when ``path`` looks like a Hugging Face model directory."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def read_config(path):
    """``(family, config dict)`` of the checkpoint in ``path``; refuses unsupported models."""
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config.json; expected a Hugging Face model directory") \
            from None
    except ValueError as e:
        raise DataError(f"{config_path}: not valid JSON: {describe(e)}") from None
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(f"{config_path}: model_type {shown(model_type)} is not supported; kplm "
                          f"imports {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type], config


def _get(config, key, path, default=None):
    if key in config:
        return config[key]
    if default is not None:
        return default
    raise DataError(f"{path}/config.json: missing key '{key}'")


def encoder_arguments(family, config, path="."):
    """kplm ``Encoder`` arguments equivalent to a Hugging Face config."""
    if family == "distilbert":
        act = config.get("activation", "gelu")
        args = dict(vocabulary_size=_get(config, "vocab_size", path),
                    num_layers=_get(config, "n_layers", path), num_heads=_get(config, "n_heads", path),
                    hidden_dim=_get(config, "dim", path),
                    intermediate_dim=_get(config, "hidden_dim", path),
                    sequence_length=_get(config, "max_position_embeddings", path),
                    dropout=config.get("dropout", 0.1), num_segments=0, layer_norm_epsilon=1e-12)
    else:
        act = config.get("hidden_act", "gelu")
        length = _get(config, "max_position_embeddings", path)
        if family == "roberta":
            length -= config.get("pad_token_id", 1) + 1  # positions start after the padding id
        types = config.get("type_vocab_size", 2)
        args = dict(vocabulary_size=_get(config, "vocab_size", path),
                    num_layers=_get(config, "num_hidden_layers", path),
                    num_heads=_get(config, "num_attention_heads", path),
                    hidden_dim=_get(config, "hidden_size", path),
                    intermediate_dim=_get(config, "intermediate_size", path),
                    sequence_length=length, dropout=config.get("hidden_dropout_prob", 0.1),
                    num_segments=types, layer_norm_epsilon=config.get("layer_norm_eps", 1e-12))
    if act not in _ACTIVATIONS:
        raise ConfigError(f"{path}/config.json: activation {shown(act)} is not supported "
                          f"({', '.join(_ACTIVATIONS)})")
    args["activation"] = _ACTIVATIONS[act]
    return args


# --- weights ---------------------------------------------------------------------------------
def load_state_dict(path):
    """``{name: numpy array}`` from ``model.safetensors`` or ``pytorch_model.bin`` in ``path``."""
    st = os.path.join(path, "model.safetensors")
    if os.path.isfile(st):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return _widen(load_file(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{st}: cannot read: {describe(e)}") from None
        except TypeError as e:  # bfloat16 tensors: numpy has no such dtype
            if "bfloat16" not in str(e) and "bf16" not in str(e).lower():
                raise
            return _load_bf16_safetensors(st)
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(pt):
        from kplm.pretrained.torch_zip import load_torch_state_dict
        return _widen(load_torch_state_dict(pt))
    raise ConfigError(f"{path}: no weights ({' or '.join(WEIGHT_FILES)})")


def _widen(state):
    return {k: v.astype(np.float32) if v.dtype in (np.float16, np.float64) else v
            for k, v in state.items()}


def _load_bf16_safetensors(path):
    """Read a safetensors file whose tensors may be bfloat16, widening those to float32."""
    import struct
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
              "I32": np.int32, "BF16": np.uint16}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return _widen(out)


def _strip_prefix(state, family):
    """Drop the task-model prefix (``bert.``, ``roberta.``, ...) from the encoder's weights."""
    marker = "transformer.layer.0." if family == "distilbert" else "encoder.layer.0."
    for key in state:
        at = key.find(marker)
        if at >= 0:
            prefix = key[:at]
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise DataError("the checkpoint holds no encoder layers (no '*encoder.layer.0.*' weights)")


def _mapping(encoder, family):
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


def _to_keras(array, kind, shape, offset):
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


def _to_hf(array, kind):
    if kind == "dense":
        return array.T
    if kind == "qkv":
        return array.reshape(array.shape[0], -1).T
    if kind == "qkv_bias":
        return array.reshape(-1)
    if kind == "attn_out":
        return array.reshape(-1, array.shape[-1]).T
    return array


def load_encoder(path, dtype=None):
    """kplm ``Encoder`` with the weights of the Hugging Face checkpoint in ``path``.

    Example:
        encoder = load_encoder("models/all-MiniLM-L6-v2")
    """
    from kplm.models.encoder import Encoder
    family, config = read_config(path)
    if family == "gpt2":
        raise ConfigError(f"{path}: a GPT-2 checkpoint is a decoder; load it with "
                          "load_backbone (or kplm.load_pretrained)")
    args = encoder_arguments(family, config, path)
    state = _strip_prefix(load_state_dict(path), family)
    encoder = Encoder(**args, dtype=dtype)
    offset = config.get("pad_token_id", 1) + 1 if family == "roberta" else 0
    missing = []
    for variable, name, kind in _mapping(encoder, family):
        if name not in state:
            missing.append(name)
            continue
        value = _to_keras(np.asarray(state[name]), kind, tuple(variable.shape), offset)
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(f"{path}: weight {name} has shape {state[name].shape}, which does not "
                            f"fit {variable.path} {tuple(variable.shape)} under its config.json")
        variable.assign(value.astype(variable.dtype))
    if [m for m in missing if not m.startswith("pooler.")]:
        raise DataError(f"{path}: the checkpoint lacks {len(missing)} encoder weights, e.g. "
                        f"{missing[0]}")
    return encoder


def load_backbone(path, dtype=None):
    """The backbone of the checkpoint in ``path``: a kplm ``Encoder`` for the BERT family, a
    ``Decoder`` for GPT-2 (``kplm.pretrained.gpt2``)."""
    family, _ = read_config(path)
    if family == "gpt2":
        from kplm.pretrained.gpt2 import load_decoder
        return load_decoder(path, dtype=dtype)
    return load_encoder(path, dtype=dtype)


# --- tokenizer -------------------------------------------------------------------------------
def load_tokenizer(path):
    """kplm ``WordPiece`` tokenizer from ``vocab.txt`` or ``tokenizer.json`` in ``path``, with the
    lowercasing and accent stripping of its ``tokenizer_config.json``."""
    from kplm.tokenizers.wordpiece import WordPiece
    family, config = read_config(path)
    if family == "gpt2":
        from kplm.pretrained.gpt2 import load_tokenizer as load_gpt2_tokenizer
        return load_gpt2_tokenizer(path)
    if family == "roberta":
        return _load_byte_bpe(path)
    options = {}
    tok_config = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(tok_config):
        with open(tok_config, encoding="utf-8") as f:
            options = json.load(f)
    lowercase = bool(options.get("do_lower_case", True))
    strip_accents = options.get("strip_accents")
    strip_accents = lowercase if strip_accents is None else bool(strip_accents)
    vocab = os.path.join(path, "vocab.txt")
    if os.path.isfile(vocab):
        return WordPiece(vocabulary=vocab, lowercase=lowercase, strip_accents=strip_accents)
    model = _fast_tokenizer_model(path, "WordPiece")
    if model is not None:
        tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
        tokenizer = WordPiece(lowercase=lowercase, strip_accents=strip_accents)
        tokenizer.tokens = tokens
        return tokenizer
    raise ConfigError(f"{path}: no vocab.txt or tokenizer.json")


def _fast_tokenizer_model(path, kind):
    """The ``model`` section of ``tokenizer.json`` in ``path`` (None without one); refuses a
    tokenizer of another kind than ``kind``."""
    fast = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(fast):
        return None
    try:
        with open(fast, encoding="utf-8") as f:
            model = json.load(f).get("model", {})
    except ValueError as e:
        raise DataError(f"{fast}: not valid JSON: {describe(e)}") from None
    if model.get("type") != kind:
        raise ConfigError(f"{fast}: a {model.get('type')} tokenizer; expected {kind}")
    return model


def _load_byte_bpe(path):
    """RoBERTa's byte-level BPE from ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``."""
    from kplm.tokenizers.byte_bpe import ByteBPE
    if os.path.isfile(os.path.join(path, "vocab.json")):
        return ByteBPE(vocabulary=path)
    model = _fast_tokenizer_model(path, "BPE")
    if model is not None:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return ByteBPE().set_vocabulary(model["vocab"], merges)
    raise ConfigError(f"{path}: no vocab.json + merges.txt or tokenizer.json")


# --- export ----------------------------------------------------------------------------------
#: What ``export_bert`` writes: ``overwrite`` replaces a directory holding only these.
HF_EXPORT_NAMES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def export_bert(encoder, tokenizer, directory, *, overwrite=False, inputs=()):
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
    activation = {"gelu": "gelu", "gelu_approximate": "gelu_new",
                  "relu": "relu"}.get(encoder.activation)
    if activation is None:
        raise ConfigError(f"activation {encoder.activation!r} has no Hugging Face name")
    require_finite(encoder, directory)
    state = {}
    for variable, name, kind in _mapping(encoder, "bert"):
        state[name] = np.ascontiguousarray(
            _to_hf(np.asarray(variable.numpy(), dtype=np.float32), kind))
    num_segments = encoder.num_segments
    if encoder.segment_embedding is None:  # DistilBERT-style: an all-zero single type
        num_segments = 1
        state["embeddings.token_type_embeddings.weight"] = np.zeros(
            (1, encoder.hidden_dim), np.float32)
    config = {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": encoder.vocabulary_size, "hidden_size": encoder.hidden_dim,
        "num_hidden_layers": encoder.num_layers, "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.intermediate_dim, "hidden_act": activation,
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
    with atomic_output(directory, **rule) as tmp:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for name, data in (("config.json", config), ("tokenizer_config.json", tok_config),
                           ("special_tokens_map.json", specials)):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
        with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(tokenizer.tokens) + "\n")
    return directory
