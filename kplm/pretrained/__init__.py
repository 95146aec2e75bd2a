"""Pretrained checkpoints: one loader for kplm run directories, keras-hub presets and Hugging Face
model directories, and the ``hf`` / ``keras_hub`` backbones that configs name.

``load_pretrained(path)`` returns ``(backbone, tokenizer)`` whatever the format; ``init_from:``
accepts any of the three. Importing this package does not import TensorFlow.

Example:
    backbone, tokenizer = kplm.load_pretrained("models/all-MiniLM-L6-v2")
"""
import os

from kplm.components import PretrainedBackbone
from kplm.errors import ConfigError
from kplm.hookspecs import hookimpl

FORMATS = ("kplm", "keras_hub", "hf")


def checkpoint_format(path, key="init_from"):
    """``"kplm"`` (a pretraining run directory), ``"keras_hub"`` (a preset) or ``"hf"`` (a Hugging
    Face model directory); a ``ConfigError`` naming ``key`` otherwise."""
    from kplm import runs
    from kplm.pretrained import huggingface, presets
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ConfigError(f"config key '{key}': {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, runs.BACKBONE_CONFIG)):
        for name in (runs.BACKBONE_WEIGHTS, runs.TOKENIZER):
            if not os.path.exists(os.path.join(path, name)):
                raise ConfigError(f"config key '{key}': {path} has no {name}; expected a "
                                  "finished `kplm pretrain` run directory")
        return "kplm"
    if presets.is_preset(path):
        return "keras_hub"
    if huggingface.is_checkpoint(path):
        return "hf"
    raise ConfigError(f"config key '{key}': {path} is not a kplm pretraining run directory "
                      "(backbone.json), a keras-hub preset (metadata.json + config.json) or a "
                      "Hugging Face model directory (config.json with model_type)")


def load_pretrained(path, dtype=None, key="init_from"):
    """``(backbone, tokenizer)`` from a kplm run directory, keras-hub preset or Hugging Face
    directory (detected from its files). Nothing is downloaded."""
    fmt = checkpoint_format(path, key)
    if fmt == "kplm":
        from kplm import runs
        backbone = runs.load_backbone(path)
        return backbone, runs.load_tokenizer(path)
    if fmt == "keras_hub":
        from kplm.pretrained.presets import load_preset
        return load_preset(path, dtype=dtype)
    from kplm.pretrained import huggingface
    return huggingface.load_backbone(path, dtype=dtype), huggingface.load_tokenizer(path)


class _CheckpointBackbone(PretrainedBackbone):
    """A backbone and tokenizer read from a directory of one checkpoint ``format``."""

    format = None
    description = None

    def __init__(self, path: str):
        self.path = path

    def get_config(self):
        return {"path": self.path}

    def check(self):
        if checkpoint_format(self.path, "backbone.path") != self.format:
            raise ConfigError(f"config key 'backbone.path': {self.path} is not a "
                              f"{self.description}; init_from accepts any checkpoint format")

    def load(self, dtype=None):
        self.check()
        return load_pretrained(self.path, dtype=dtype, key="backbone.path")


class HuggingFaceBackbone(_CheckpointBackbone):
    """``backbone: {name: hf, path: DIR}``: a BERT-family encoder (or a GPT-2 decoder) and its
    tokenizer from a local Hugging Face model directory (``config.json``, ``model.safetensors`` or
    ``pytorch_model.bin``, ``vocab.txt`` / ``vocab.json`` + ``merges.txt`` / ``tokenizer.json``).

    Args:
        path: str. The model directory.

    Example:
    >>> HuggingFaceBackbone(path="models/bert").get_config()
    {'path': 'models/bert'}
    """

    format, description = "hf", "Hugging Face model directory"

    def family(self):
        from kplm.pretrained import huggingface
        return "decoder" if huggingface.read_config(self.path)[0] == "gpt2" else "encoder"


class KerasHubPreset(_CheckpointBackbone):
    """``backbone: {name: keras_hub, path: DIR}``: a backbone and tokenizer from a local keras-hub
    preset directory (a kplm ``Encoder`` or a keras-hub ``BertBackbone`` preset).

    Args:
        path: str. The preset directory.

    Example:
    >>> KerasHubPreset(path="presets/bert_tiny").get_config()
    {'path': 'presets/bert_tiny'}
    """

    format, description = "keras_hub", "keras-hub preset directory"


@hookimpl
def register_backbones(register):
    register("hf", HuggingFaceBackbone)
    register("keras_hub", KerasHubPreset)
