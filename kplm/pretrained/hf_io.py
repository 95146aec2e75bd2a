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
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def read_config_json(path):
    """The ``config.json`` of the model directory ``path``, as a dict (its ``model_type`` not
    checked: ``kplm.pretrained.huggingface.read_config`` does)."""
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config.json; expected a Hugging Face model directory") \
            from None
    except ValueError as e:
        raise DataError(f"{config_path}: not valid JSON: {describe(e)}") from None


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
    if name not in ACTIVATIONS:
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
    try:
        with open(fast, encoding="utf-8") as f:
            model = json.load(f).get("model", {})
    except ValueError as e:
        raise DataError(f"{fast}: not valid JSON: {describe(e)}") from None
    if model.get("type") != kind:
        raise ConfigError(f"{fast}: a {model.get('type')} tokenizer; expected {kind}")
    return model


def read_tokenizer_config(path):
    """The options of ``tokenizer_config.json`` in ``path`` (``{}`` without one)."""
    tok_config = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(tok_config):
        return {}
    with open(tok_config, encoding="utf-8") as f:
        return json.load(f)


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
        value = convert(np.asarray(state[name]), kind, tuple(variable.shape))
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(f"{path}: weight {name} has shape {state[name].shape}, which does not "
                            f"fit {variable.path} {tuple(variable.shape)} under its config.json")
        variable.assign(value.astype(variable.dtype))
    return missing


def hf_activation_name(activation):
    """The Hugging Face config name of a kplm activation (``gelu_approximate`` is
    ``gelu_new``); a ``ConfigError`` for one with no such name."""
    from kplm.errors import ConfigError
    name = {"gelu": "gelu", "gelu_approximate": "gelu_new", "relu": "relu"}.get(activation)
    if name is None:
        raise ConfigError(f"activation {activation!r} has no Hugging Face name")
    return name
