"""Pretrained checkpoints: one loader for kplm run directories, keras-hub presets and Hugging Face
model directories, and the ``hf`` / ``keras_hub`` backbones that configs name.

``load_pretrained(path)`` returns ``(backbone, tokenizer)`` whatever the format; ``init_from:``
accepts any of the three. Importing this package does not import TensorFlow.

Example:
    backbone, tokenizer = kplm.load_pretrained("models/all-MiniLM-L6-v2")
"""
import os
from typing import Optional

from kplm.components import PretrainedBackbone
from kplm.errors import ConfigError, describe, reading, shown
from kplm.hookspecs import hookimpl

FORMATS = ("kplm", "keras_hub", "hf")


def checkpoint_format(path, key="init_from"):
    """``"kplm"`` (a pretraining run directory), ``"keras_hub"`` (a preset) or ``"hf"`` (a Hugging
    Face model directory); a ``ConfigError`` naming ``key`` otherwise."""
    from kplm import runs
    from kplm.pretrained import huggingface, presets
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ConfigError(f"config key '{key}': {shown(path)} is not a directory")
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


def check_checkpoint(path, key="init_from"):
    """``checkpoint_format(path)``, after checking the checkpoint's files can be read: its JSON
    configs parse and its ``.weights.h5`` files are whole HDF5 files (a truncated or damaged
    one is refused here, before a run touches the disk, not when its weights are loaded).
    Cheap: no TensorFlow, no weights read."""
    from kplm import runs
    fmt = checkpoint_format(path, key)
    json_files, h5_files = [], []
    if fmt == "kplm":
        json_files = [runs.BACKBONE_CONFIG, os.path.join(runs.TOKENIZER, "tokenizer.json")]
        h5_files = [runs.BACKBONE_WEIGHTS]
    elif fmt == "keras_hub":
        json_files, h5_files = ["config.json", "metadata.json"], ["model.weights.h5"]
    else:
        from kplm.pretrained import huggingface
        _check_hf_arguments(path)
        if not any(os.path.isfile(os.path.join(path, f)) for f in huggingface.WEIGHT_FILES):
            raise ConfigError(f"config key '{key}': {path} has no weights "
                              f"({' or '.join(huggingface.WEIGHT_FILES)})")
    for name in json_files:
        if os.path.exists(os.path.join(path, name)) or fmt == "kplm":
            data = _read_json(os.path.join(path, name), key)
            if not isinstance(data, dict):
                raise ConfigError(f"config key '{key}': {os.path.join(path, name)} is not a JSON "
                                  "object")
    for name in h5_files:
        check_weights_file(os.path.join(path, name), key)
    return fmt


def checkpoint_family(path):
    """The family (``"encoder"``, ``"decoder"``, ``"encoder_decoder"``) of the backbone in a
    checked checkpoint directory, from its files (no weights read); None when they do not
    tell."""
    from kplm import runs
    fmt = checkpoint_format(path)
    if fmt == "hf":
        return HuggingFaceBackbone(path=path).family()
    if fmt == "keras_hub":
        return "encoder"
    config_path = os.path.join(path, runs.BACKBONE_CONFIG)
    return runs.saved_family(_read_json(config_path, "init_from"))


def _check_hf_arguments(path):
    """The backbone a Hugging Face ``config.json`` describes, checked as a config section is
    (sizes are integers within the backbone's ``limits``), naming the file."""
    from kplm.checks import check_limits
    from kplm.pretrained import huggingface
    where = os.path.join(path, "config.json")
    family, config = huggingface.read_config(path)
    try:
        if huggingface.backbone_family(family) == "decoder":
            from kplm.models.decoder import Decoder as cls
        elif family == "t5":
            from kplm.models.t5 import T5EncoderDecoder as cls
        elif huggingface.backbone_family(family) == "encoder_decoder":
            from kplm.models.encoder_decoder import EncoderDecoder as cls
        else:
            from kplm.models.encoder import Encoder as cls
        args = huggingface.backbone_arguments(family, config, path)
    except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type
        raise ConfigError(f"{where}: {describe(e)}") from None
    for name in ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
                 "sequence_length", "num_segments"):
        value = args.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: the backbone's {name} must be an integer, got "
                              f"{shown(value)}")
    for name in ("dropout", "layer_norm_epsilon"):
        if isinstance(args.get(name), bool) or not isinstance(args.get(name, 0.0), (int, float)):
            raise ConfigError(f"{where}: the backbone's {name} must be a number, got "
                              f"{shown(args.get(name))}")
    check_limits(cls.limits, args, f"{where}: backbone")


def _read_json(path, key):
    import json
    with reading(path, f"the {key} checkpoint's JSON", error=ConfigError):
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def check_weights_file(path, key="init_from"):
    """Refuse a ``.weights.h5`` file that is missing, truncated or not HDF5, naming ``key`` and
    the file; walks its structure (object headers), not its data."""
    import h5py
    with reading(path, f"the {key} weights (damaged?)", error=ConfigError):
        with h5py.File(path, "r") as f:
            f.visit(lambda name: None)


def load_pretrained(path, dtype=None, key="init_from"):
    """``(backbone, tokenizer)`` from a kplm run directory, keras-hub preset or Hugging Face
    directory (detected from its files, which are checked first). Nothing is downloaded."""
    fmt = check_checkpoint(path, key)
    if fmt == "kplm":
        from kplm import runs
        backbone, tokenizer = runs.load_backbone(path), runs.load_tokenizer(path)
    elif fmt == "keras_hub":
        from kplm.pretrained.presets import load_preset
        backbone, tokenizer = load_preset(path, dtype=dtype)
    else:
        from kplm.pretrained import huggingface
        backbone = huggingface.load_backbone(path, dtype=dtype)
        tokenizer = huggingface.load_tokenizer(path)
    check_tokenizer_fits(tokenizer, backbone, path)
    return backbone, tokenizer


def check_tokenizer_fits(tokenizer, backbone, path):
    """Refuse (``DataError``, one line) a tokenizer with more tokens than ``backbone`` has
    embedding rows: its last ids would index past the table (a traceback mid-training, as soon
    as the text holds one of them)."""
    from kplm.errors import DataError
    rows = getattr(backbone, "vocabulary_size", None)
    tokens = len(tokenizer.tokens) if getattr(tokenizer, "tokens", None) is not None else None
    if rows and tokens and tokens > rows:
        raise DataError(f"{path}: the tokenizer has {tokens:,} tokens but the model's embedding "
                        f"table {rows:,} rows; the vocabulary and the weights are not of one "
                        "model")


class _CheckpointBackbone(PretrainedBackbone):
    """A backbone and tokenizer read from a directory of one checkpoint ``format``.

    ``sequence_length`` (pretraining only): the length of the rows continued pretraining packs,
    at most the checkpoint's own (its position table); by default the checkpoint's. A
    512-position checkpoint pretrained on short task sentences trains much faster on rows of
    128.
    """

    format = None
    description = None

    def __init__(self, path: str, sequence_length: Optional[int] = None,
                 keep_layers: Optional[list[int]] = None):
        self.path = path
        self.sequence_length = sequence_length
        self.keep_layers = keep_layers

    def get_config(self):
        config = {"path": self.path}
        if self.sequence_length is not None:
            config["sequence_length"] = self.sequence_length
        if self.keep_layers is not None:
            config["keep_layers"] = self.keep_layers
        return config

    def check(self):
        if self.keep_layers is not None:
            from kplm.models.select_layers import check_keep_layers
            check_keep_layers(self.keep_layers)
        length = self.sequence_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or length < 2):
            raise ConfigError(f"config key 'backbone.sequence_length': expected an integer >= 2, "
                              f"got {shown(length)}")
        if check_checkpoint(self.path, "backbone.path") != self.format:
            raise ConfigError(f"config key 'backbone.path': {self.path} is not a "
                              f"{self.description}; init_from accepts any checkpoint format")

    def row_length(self, backbone):
        """The length of the rows to train on: ``sequence_length`` when set (refused when
        longer than ``backbone``'s position table), else the backbone's."""
        if self.sequence_length is None:
            return backbone.sequence_length
        if self.sequence_length > backbone.sequence_length:
            raise ConfigError(f"config key 'backbone.sequence_length': {self.sequence_length} is "
                              f"longer than the checkpoint's {backbone.sequence_length} positions "
                              f"({self.path})")
        return self.sequence_length

    def load(self, dtype=None):
        self.check()
        backbone, tokenizer = load_pretrained(self.path, dtype=dtype, key="backbone.path")
        if self.keep_layers is not None:
            from kplm.models.select_layers import select_layers
            backbone = select_layers(backbone, self.keep_layers)
        return backbone, tokenizer


class HuggingFaceBackbone(_CheckpointBackbone):
    """``backbone: {name: hf, path: DIR}``: a BERT-family encoder (or a GPT-2 decoder) and its
    tokenizer from a local Hugging Face model directory (``config.json``, ``model.safetensors`` or
    ``pytorch_model.bin``, ``vocab.txt`` / ``vocab.json`` + ``merges.txt`` / ``tokenizer.json``).

    Args:
        path: str. The model directory.
        sequence_length: int or None. Pretraining only: pack rows of this many tokens (at most
            the checkpoint's positions). Defaults to the checkpoint's length.
        keep_layers: list of int or None. Only these Transformer blocks of the checkpoint, in
            this order (a distillation student). Defaults to all.

    Example:
    >>> HuggingFaceBackbone(path="models/bert").get_config()
    {'path': 'models/bert'}
    >>> HuggingFaceBackbone(path="models/bert", sequence_length=128).get_config()
    {'path': 'models/bert', 'sequence_length': 128}
    """

    format, description = "hf", "Hugging Face model directory"

    def family(self):
        from kplm.pretrained import huggingface
        return huggingface.backbone_family(huggingface.read_config(self.path)[0])

    def initialize_heads(self, model):
        from kplm.pretrained import huggingface
        return huggingface.initialize_masked_lm_head(self.path, model)


class KerasHubPreset(_CheckpointBackbone):
    """``backbone: {name: keras_hub, path: DIR}``: a backbone and tokenizer from a local keras-hub
    preset directory (a kplm ``Encoder`` or a keras-hub ``BertBackbone`` preset).

    Args:
        path: str. The preset directory.
        sequence_length: int or None. Pretraining only: as for ``hf``.
        keep_layers: list of int or None. As for ``hf``.

    Example:
    >>> KerasHubPreset(path="presets/bert_tiny").get_config()
    {'path': 'presets/bert_tiny'}
    """

    format, description = "keras_hub", "keras-hub preset directory"


@hookimpl
def register_backbones(register):
    register("hf", HuggingFaceBackbone)
    register("keras_hub", KerasHubPreset)
