"""Reading Hugging Face model directories: ``config.json``, the weights (``model.safetensors``, or
``pytorch_model.bin`` read without running pickled code by ``kplm.pretrained.torch_zip``), the
``tokenizer.json`` model section, and the helpers every converter shares (activation names,
task-model prefixes). The bottom of ``kplm.pretrained``: it imports no converter, and the
converters (``kplm.pretrained.bert``, ``kplm.pretrained.gpt2``) and the entry points
(``kplm.pretrained.huggingface``) import it.

Example:
>>> activation({"hidden_act": "gelu_new"}, "hidden_act", "gelu")
'gelu_approximate'
>>> strip_prefix({"bert.encoder.layer.0.x": 1, "cls.y": 2}, "encoder.layer.0.", "encoder layers")
{'encoder.layer.0.x': 1}
"""
import json
import os

import numpy as np

from kplm.errors import ConfigError, DataError, describe, shown

#: Weight files read, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Hugging Face activation names -> the Keras activations kplm's backbones take.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
               "gelu_pytorch_tanh": "gelu_approximate", "gelu_fast": "gelu_approximate",
               "relu": "relu"}


def is_checkpoint(path):
    """True when ``path`` looks like a Hugging Face model directory."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(found, dict) and "model_type" in found


def read_config_json(path):
    """The ``config.json`` of the model directory ``path``, as a dict (its ``model_type`` not
    checked: ``kplm.pretrained.huggingface.read_config`` does)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.lexists(config_path):
        raise ConfigError(f"{path}: no config.json; expected a Hugging Face model directory")
    config = _read_json_object(config_path)
    check_config_size(config, config_path)
    return config


#: config.json keys of a model's sizes, per meaning, as the supported families spell them.
#: Layers: the keys of one spelling add up (an encoder's and a decoder's), the largest spelling
#: counts (BART's config also says num_hidden_layers).
_SIZE_KEYS = {"vocabulary": ("vocab_size",), "width": ("hidden_size", "d_model", "n_embd"),
              "layers": (("num_hidden_layers",), ("n_layer",), ("num_layers",
                         "num_decoder_layers"), ("encoder_layers", "decoder_layers")),
              "inner": ("intermediate_size", "d_ff", "n_inner", "encoder_ffn_dim",
                        "decoder_ffn_dim"),
              "positions": ("max_position_embeddings", "n_positions")}


def check_config_size(config, config_path):
    """Refuse (``DataError``, one line naming the file) a ``config.json`` whose size keys are
    not whole numbers, or describe a model whose float32 weights alone exceed this machine's
    memory (``hidden_size: 1e9`` was an out-of-memory traceback)."""
    sizes = {}
    for meaning, keys in _SIZE_KEYS.items():
        for group in keys:
            total = 0
            for key in (group if isinstance(group, tuple) else (group,)):
                value = config.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise DataError(f"{config_path}: {key}: expected a whole number, got "
                                    f"{shown(value)}")
                total += value
            sizes[meaning] = max(sizes.get(meaning, 0), total)
    check_model_size(sizes, config_path)


def check_model_size(sizes, config_path):
    """Refuse (``DataError`` naming ``config_path``) a model whose float32 weights alone exceed
    this machine's memory; ``sizes``: ``vocabulary``, ``width``, ``layers`` (all blocks),
    ``inner`` (feed-forward width; 4 x ``width`` when missing), ``positions``."""
    from kplm.training.distribute import host_memory_bytes
    width, inner = sizes.get("width", 0), sizes.get("inner") or 4 * sizes.get("width", 0)
    parameters = (width * (sizes.get("vocabulary", 0) + sizes.get("positions", 0))
                  + sizes.get("layers", 0) * (4 * width * width + 2 * width * inner))
    memory = host_memory_bytes()
    if memory and 4 * parameters > memory:
        raise DataError(f"{config_path}: a model of about {parameters:,} parameters "
                        f"({4 * parameters / 2 ** 30:,.1f} GiB in float32), more than this "
                        f"machine's {memory / 2 ** 30:.1f} GiB of memory; is it damaged?")


def config_value(config, key, path, default=None):
    """``config[key]``; ``default`` when missing (a ``DataError`` naming the file without one)."""
    if key in config:
        return config[key]
    if default is not None:
        return default
    raise DataError(f"{path}/config.json: missing key '{key}'")


def activation(config, key, default, path="."):
    """The Keras activation of the Hugging Face activation ``config[key]`` (``default`` when
    missing); a ``ConfigError`` naming the file for one kplm has no equivalent of."""
    name = config.get(key, default)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"{path}/config.json: {key} {shown(name)} is not supported "
                          f"({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


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
        except (TypeError, AttributeError, KeyError):  # a dtype numpy lacks (bfloat16, fp8)
            try:
                return _load_bf16_safetensors(st)
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise DataError(f"{st}: cannot read: {describe(e)}") from None
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
        if info.get("dtype") not in dtypes:
            raise DataError(f"{path}: weight {name} is {shown(info.get('dtype'))}; kplm reads "
                            f"{', '.join(dtypes)} tensors")
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return _widen(out)


def strip_prefix(state, marker, what):
    """The weights of ``state`` under the task-model prefix (``bert.``, ``transformer.``, ...)
    found before the first key containing ``marker``, with that prefix dropped (weights outside
    it, such as task heads, are left out); a ``DataError`` saying the checkpoint holds no
    ``what`` when no key contains ``marker``."""
    for key in state:
        at = key.find(marker)
        if at >= 0:
            prefix = key[:at]
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise DataError(f"the checkpoint holds no {what} (no '*{marker}*' weights)")


# --- tokenizer files -------------------------------------------------------------------------
def fast_tokenizer_model(path, kind):
    """The ``model`` section of ``tokenizer.json`` in ``path`` (None without one); refuses a
    tokenizer of another kind than ``kind``."""
    fast = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(fast):
        return None
    found = _read_json_object(fast)
    model = found.get("model")
    if not isinstance(model, dict):
        raise DataError(f"{fast}: no 'model' object; is it a Hugging Face tokenizer.json?")
    if model.get("type") != kind:
        raise ConfigError(f"{fast}: a {shown(model.get('type'))} tokenizer; expected {kind}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab or not all(
            isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool)
            for t, i in vocab.items()):
        raise DataError(f"{fast}: model.vocab must map tokens to integer ids")
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):  # rows of the embedding table, one token each
        at = next(i for i, found in enumerate(ids) if found != i)
        what = f"id {ids[at]} is given twice" if ids[at] < at else f"id {at} is missing"
        raise DataError(f"{fast}: model.vocab ids must be 0 to {len(ids) - 1}, one token "
                        f"each; {what}")
    return model


def _read_json_object(path):
    """The JSON object in ``path``, or a ``DataError`` line naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON: {describe(e)}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it: {describe(e)}") from None
    if not isinstance(found, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(found).__name__}")
    return found


def read_tokenizer_config(path):
    """The options of ``tokenizer_config.json`` in ``path`` (``{}`` without one)."""
    tok_config = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(tok_config):
        return {}
    options = _read_json_object(tok_config)
    for key in ("do_lower_case", "strip_accents"):  # bool("no") would be True
        if options.get(key) is not None and not isinstance(options[key], bool):
            raise DataError(f"{tok_config}: {key}: expected true or false, got "
                            f"{shown(options[key])}")
    return options


def _refuse_layers_beyond(mapping, state, path):
    """Refuse (``DataError``) weights of a block ``config.json`` does not count (its
    ``num_hidden_layers`` lower than the blocks the file holds: the rest were dropped without a
    word). Blocks are told by the first ``.N.`` of a weight's name."""
    import re
    index = re.compile(r"\.(\d+)\.")

    def pattern(name):
        found = index.search(name)
        return (name[:found.start()] + ".{}." + name[found.end():], int(found.group(1))) \
            if found else (None, None)
    used = {}
    for _, name, _ in mapping:
        key, number = pattern(name)
        if key is not None:
            used.setdefault(key, set()).add(number)
    for name in state:
        key, number = pattern(name)
        if key in used and number not in used[key] and number > max(used[key]):
            raise DataError(f"{path}: the weights hold block {number} ({name}), but "
                            f"config.json counts {max(used[key]) + 1}; config.json and the "
                            "weights are not of one model")


def assign_weights(mapping, state, path, convert):
    """Assign each ``(variable, hf_name, kind)`` of ``mapping`` its weight ``state[hf_name]``,
    converted by ``convert(array, kind, variable_shape)``; returns the names ``state`` lacks.
    A weight that does not fit its variable is one ``DataError`` line naming both."""
    import numpy as np

    from kplm.errors import DataError
    missing = []
    for variable, name, kind in mapping:
        if name not in state:
            missing.append(name)
            continue
        if not np.issubdtype(np.asarray(state[name]).dtype, np.floating):
            raise DataError(f"{path}: weight {name} holds {np.asarray(state[name]).dtype} "
                            "values; expected floating-point weights")
        try:
            value = convert(np.asarray(state[name]), kind, tuple(variable.shape))
        except ValueError as e:  # a reshape of the wrong number of elements
            raise DataError(f"{path}: weight {name} of shape {np.shape(state[name])} does not "
                            f"fit {variable.path} {tuple(variable.shape)} ({describe(e)})") \
                from None
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(f"{path}: weight {name} has shape {state[name].shape}, which does not "
                            f"fit {variable.path} {tuple(variable.shape)} under its config.json")
        variable.assign(value.astype(variable.dtype))
    _refuse_layers_beyond(mapping, state, path)
    return missing


def hf_activation_name(activation):
    """The Hugging Face config name of a kplm activation (``gelu_approximate`` is
    ``gelu_new``); a ``ConfigError`` for one with no such name."""
    from kplm.errors import ConfigError
    name = {"gelu": "gelu", "gelu_approximate": "gelu_new", "relu": "relu"}.get(activation)
    if name is None:
        raise ConfigError(f"activation {activation!r} has no Hugging Face name")
    return name
