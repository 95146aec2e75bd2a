"""The run directory: the contract between pretraining, fine-tuning, evaluation and export.

``config.yaml`` (resolved), ``tokenizer/``, ``checkpoints/``, ``tensorboard/{train,validation}/``,
``metrics.json``, ``backbone.weights.h5`` + ``backbone.json`` (the pretrained backbone).
"""
import importlib
import json
import os

from kplm.errors import KplmError

CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
METRICS = "metrics.json"
BACKBONE_WEIGHTS = "backbone.weights.h5"
BACKBONE_CONFIG = "backbone.json"


def write_json(path, data):
    """Write JSON atomically (temporary name in the same directory, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_backbone(backbone, run_dir):
    """Save a backbone's config and weights into ``run_dir`` (each file atomically)."""
    import keras
    weights = os.path.join(run_dir, BACKBONE_WEIGHTS)
    backbone.save_weights(weights + ".tmp.weights.h5")
    os.replace(weights + ".tmp.weights.h5", weights)
    write_json(os.path.join(run_dir, BACKBONE_CONFIG), keras.saving.serialize_keras_object(backbone))


def load_backbone(run_dir):
    """Rebuild the backbone a run saved, with its trained weights.

    Example:
        backbone = kplm.load_backbone("runs/bert_tiny_mlm")
    """
    import keras

    import kplm.models.encoder  # noqa: F401  (registers kplm's serializable classes)
    config_path = os.path.join(run_dir, BACKBONE_CONFIG)
    if not os.path.exists(config_path):
        raise KplmError(f"{run_dir}: no saved backbone ({BACKBONE_CONFIG}); is it a finished "
                        "pretraining run directory?")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    module = config.get("module") if isinstance(config, dict) else None
    if module:  # the backbone's class registers itself when its module is imported
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise KplmError(f"{config_path}: the backbone's module {module} cannot be imported "
                            f"({e}); is the plugin that defines it installed?") from None
    backbone = keras.saving.deserialize_keras_object(config)
    backbone.load_weights(os.path.join(run_dir, BACKBONE_WEIGHTS))
    return backbone


def load_tokenizer(run_dir):
    """The tokenizer a run saved in ``run_dir/tokenizer``."""
    from kplm.plugins import get_registry
    path = os.path.join(run_dir, TOKENIZER)
    try:
        with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
            name = json.load(f).get("name", "wordpiece")
    except FileNotFoundError:
        raise KplmError(f"{run_dir}: no saved tokenizer ({TOKENIZER}/)") from None
    return get_registry().get("tokenizer", name).load(path)
