"""Low-rank adaptation (LoRA, Hu et al. 2021) of a pretrained backbone, with Keras' own LoRA.

``enable_lora(backbone, rank, alpha, targets)`` calls keras_hub's ``Backbone.enable_lora``:
every backbone weight is frozen and the projections named in ``targets`` (by default the query
and value projections of every attention layer) get Keras' LoRA factors
(``EinsumDense.enable_lora`` / ``Dense.enable_lora``: ``kernel + alpha / rank * A @ B``, ``A``
He-uniform, ``B`` zero, so training starts from the pretrained model exactly). Those
projections' biases stay trainable (keras_hub marks the whole projection trainable), as does the
task head outside the backbone.

What a LoRA run keeps (``save_variables`` / ``load_variables``): the trainable variables only,
by their Keras paths, in a safetensors file (``adapters.safetensors``); the backbone comes back
from the checkpoint the run started from. ``merged_copy`` folds the factors into the kernels
(Keras writes a LoRA layer's weights merged) and returns a plain model of the same
architecture, as fast as the original and portable without the base checkpoint.

Example:
>>> import numpy as np
>>> from kplm.models.encoder import Encoder
>>> from kplm.models.classifier import SequenceClassifier
>>> backbone = Encoder(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
...                    intermediate_dim=16, sequence_length=8)
>>> model = SequenceClassifier(backbone, num_classes=2)
>>> adapted = enable_lora(backbone, rank=2, alpha=4)
>>> sorted(v.path.split("/")[-1] for v in backbone.trainable_weights)[:2]
['bias', 'bias']
>>> x = {"token_ids": np.ones((1, 8), "int32"), "segment_ids": np.zeros((1, 8), "int32"),
...      "padding_mask": np.ones((1, 8), "int32")}
>>> factor = next(v for v in backbone.weights if v.path.endswith("lora_kernel_b"))
>>> _ = factor.assign(np.full(factor.shape, 0.5, "float32"))  # as if trained
>>> merged = merged_copy(model)
>>> is_adapted(model), is_adapted(merged)
(True, False)
>>> bool(np.allclose(model(x), merged(x), atol=1e-5))
True
"""
import os

#: What keras_hub's ``Backbone.enable_lora`` adapts: the attention's query and value projections
#: (``query`` / ``value`` in keras_hub's attention layers, ``query_dense`` / ``value_dense``
#: in others).
TARGETS = ("query_dense", "value_dense", "query", "value")
ADAPTERS = "adapters.safetensors"
ADAPTERS_CONFIG = "adapters.json"
_LORA_KEYS = ("lora_rank", "lora_alpha")


def lora_layers(model):
    """The layers of ``model`` (any nesting) with LoRA enabled."""
    from kplm._compat import sublayers
    return [layer for layer in sublayers(model) if getattr(layer, "lora_enabled", False)]


def adaptable_names(backbone):
    """The names of ``backbone``'s projection layers (``Dense``, ``EinsumDense``) that LoRA
    can adapt, sorted."""
    import keras

    from kplm._compat import sublayers
    kinds = (keras.layers.Dense, keras.layers.EinsumDense)
    return sorted({layer.name for layer in sublayers(backbone) if isinstance(layer, kinds)})


def enable_lora(backbone, rank, alpha=None, targets=None, key="finetune.lora_rank"):
    """Freeze ``backbone`` and adapt its projections named in ``targets`` (default: the
    attention's query and value) with rank ``rank`` and scale ``alpha / rank`` (``alpha``
    defaults to ``rank``: scale 1, Keras' default); returns the adapted layers. A backbone
    without such projections, or a target name none of its projections has, is one
    ``ConfigError`` naming the key."""
    from kplm.errors import ConfigError
    if not hasattr(backbone, "enable_lora"):
        raise ConfigError(f"config key '{key}': backbone {type(backbone).__name__} is not a "
                          "keras_hub Backbone; LoRA adapts those")
    if targets is not None:
        known = adaptable_names(backbone)
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise ConfigError(f"config key 'finetune.lora_targets': backbone "
                              f"{type(backbone).__name__} has no projection layer named "
                              f"'{unknown[0]}'; it has {', '.join(known)}")
    backbone.enable_lora(rank, target_layer_names=list(targets or TARGETS))
    layers = lora_layers(backbone)
    if not layers:
        raise ConfigError(f"config key '{key}': backbone {type(backbone).__name__} has no "
                          f"attention projection named {', '.join(TARGETS)} to adapt")
    for layer in layers:
        layer.lora_alpha = float(alpha if alpha is not None else rank)
    return layers


def is_adapted(model):
    """Whether ``model`` holds LoRA factors."""
    return any(v.path.endswith(("lora_kernel_a", "lora_kernel_b")) for v in model.weights)


def count(variables):
    """``(all parameters, LoRA factor parameters)`` of ``variables``."""
    import math
    total = sum(math.prod(v.shape) for v in variables)
    factors = sum(math.prod(v.shape) for v in variables
                  if v.path.endswith(("lora_kernel_a", "lora_kernel_b")))
    return int(total), int(factors)


def _by_path(variables, what):
    from kplm.errors import KplmError
    named = {}
    for variable in variables:
        if variable.path in named:
            raise KplmError(f"{what}: two variables share the path {variable.path}")
        named[variable.path] = variable
    return named


def save_variables(variables, path):
    """Write ``variables`` (by Keras path) to the safetensors file ``path``, atomically; a
    non-finite value is refused before anything is written."""
    import numpy as np
    from safetensors.numpy import save_file

    from kplm.finite import require_finite
    require_finite(list(variables), path)
    arrays = {p: np.ascontiguousarray(np.asarray(v.numpy()))
              for p, v in _by_path(variables, path).items()}
    tmp = f"{path}.tmp"
    save_file(arrays, tmp)
    os.replace(tmp, path)
    return os.path.getsize(path)


def load_variables(variables, path, what="adapters"):
    """Assign the values in the safetensors file ``path`` to ``variables`` by path; a missing,
    extra or misshapen tensor is one ``KplmError`` line naming the file."""
    from kplm.errors import KplmError, describe
    from safetensors.numpy import load_file
    try:
        arrays = load_file(path)
    except Exception as e:  # not a safetensors file, truncated, unreadable
        raise KplmError(f"{path}: cannot read the {what} ({describe(e)})") from None
    named = _by_path(variables, path)
    missing = sorted(set(named) - set(arrays))
    extra = sorted(set(arrays) - set(named))
    if missing or extra:
        first = (f"no {missing[0]}" if missing else f"an unknown tensor {extra[0]}")
        raise KplmError(f"{path}: the {what} do not fit this model ({first}; "
                        f"{len(missing)} missing, {len(extra)} unexpected)")
    for name, variable in named.items():
        if tuple(arrays[name].shape) != tuple(variable.shape):
            raise KplmError(f"{path}: {what} tensor {name} has shape {arrays[name].shape}, "
                            f"the model's is {tuple(variable.shape)}")
        variable.assign(arrays[name])


def _strip_lora(config):
    if isinstance(config, dict):
        return {k: _strip_lora(v) for k, v in config.items() if k not in _LORA_KEYS}
    if isinstance(config, list):
        return [_strip_lora(v) for v in config]
    return config


def merged_copy(model):
    """A plain copy of ``model`` (same class and config, no LoRA) whose kernels hold the
    merged ``kernel + alpha / rank * A @ B``."""
    import tempfile

    import keras
    config = _strip_lora(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)  # a copy for inference; whoever trains it compiles
    plain = keras.saving.deserialize_keras_object(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "merged.weights.h5")
        model.save_weights(path)  # Keras writes a LoRA layer's kernel merged
        plain.load_weights(path)
    return plain
