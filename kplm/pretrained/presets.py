"""keras-hub preset directories in and out.

A preset directory (``config.json`` naming the backbone class, ``model.weights.h5``,
``tokenizer.json`` + ``assets/tokenizer/vocabulary.txt``, ``metadata.json``) is what
``keras_hub.models.Backbone.save_to_preset`` writes and ``from_preset`` reads. kplm reads presets
of its own ``Encoder`` and of keras-hub's ``BertBackbone`` (converted to an ``Encoder`` with the
same weights and keras-hub's tanh-approximated GELU, so outputs are unchanged), and writes a
backbone + tokenizer as a preset that ``keras_hub.models.Backbone.from_preset`` loads once
``kplm`` is imported.

Example:
    save_preset(kplm.load_backbone("runs/bert_tiny_mlm"),
                kplm.load_tokenizer("runs/bert_tiny_mlm"), "out/bert-tiny-preset")
    backbone, tokenizer = load_preset("out/bert-tiny-preset")
"""
import json
import os

from kplm.errors import ConfigError, describe, reading, shown
from kplm.outputs import EXPORT_STAMP

_BERT = "keras_hub>BertBackbone"
_KPLM = "kplm>Encoder"


def is_preset(path):
    """True when ``path`` looks like a keras-hub preset directory."""
    return (os.path.isfile(os.path.join(path, "metadata.json"))
            and _registered_name(path) is not None)


def _registered_name(path):
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("registered_name")
    except (OSError, ValueError, AttributeError):
        return None


def load_preset(path, dtype=None):
    """``(Encoder, WordPiece)`` from a keras-hub preset directory."""
    import keras_hub

    import kplm.models.encoder  # noqa: F401  (registers kplm>Encoder)
    from kplm.models.encoder import Encoder
    name = _registered_name(path)
    if name not in (_BERT, _KPLM):
        raise ConfigError(f"{path}: a {name} preset; kplm reads presets of {_KPLM} and {_BERT}")
    _check_sizes(path)
    with reading(path, "a keras-hub preset", error=ConfigError):  # a damaged weights file
        loaded = keras_hub.models.Backbone.from_preset(path, dtype=dtype)
    if name == _BERT:
        encoder = Encoder(
            vocabulary_size=loaded.vocabulary_size, num_layers=loaded.num_layers,
            num_heads=loaded.num_heads, hidden_dim=loaded.hidden_dim,
            intermediate_dim=loaded.intermediate_dim, sequence_length=loaded.max_sequence_length,
            dropout=loaded.dropout, num_segments=loaded.num_segments,
            activation="gelu_approximate", layer_norm_epsilon=1e-12, dtype=dtype)
        source = {w.path: w for w in loaded.weights}
        for variable in encoder.weights:
            variable.assign(source[variable.path])
        loaded = encoder
    from kplm.finite import require_finite_input
    return require_finite_input(loaded, path), _load_tokenizer(path)


#: A preset backbone's size arguments (``config.json``'s ``config``), by meaning.
_PRESET_SIZES = {"vocabulary_size": "vocabulary", "hidden_dim": "width", "num_layers": "layers",
                 "intermediate_dim": "inner", "max_sequence_length": "positions",
                 "sequence_length": "positions", "num_heads": None, "num_segments": None}


def _check_sizes(path):
    """Refuse (one line naming ``config.json``) size arguments that are not whole numbers >= 1
    (``num_segments`` >= 0), or a model beyond this machine's memory, before Keras builds it (a
    traceback, an OOM)."""
    from kplm.errors import DataError
    from kplm.pretrained.hf_io import check_model_size
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            section = json.load(f).get("config")
    except (OSError, ValueError, RecursionError, AttributeError):
        return  # reading the preset names what is wrong with the file
    if not isinstance(section, dict):
        return
    sizes = {}
    for key, meaning in _PRESET_SIZES.items():
        value = section.get(key)
        if value is None:
            continue
        least = 0 if key == "num_segments" else 1  # 0 segments: DistilBERT's shape
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DataError(f"{config_path}: config.{key}: expected a whole number >= {least}, "
                            f"got {shown(value)}")
        if meaning:
            sizes[meaning] = max(sizes.get(meaning, 0), value)
    check_model_size(sizes, config_path)


def _load_tokenizer(path):
    import keras_hub

    from kplm.tokenizers.wordpiece import WordPiece
    try:
        layer = keras_hub.tokenizers.Tokenizer.from_preset(path)
    except Exception as e:
        raise ConfigError(f"{path}: no usable tokenizer in the preset: {describe(e)}") from None
    if not isinstance(layer, keras_hub.tokenizers.WordPieceTokenizer):
        raise ConfigError(f"{path}: a {type(layer).__name__}; kplm reads WordPiece tokenizers")
    tokenizer = WordPiece(lowercase=layer.lowercase, strip_accents=layer.strip_accents)
    tokenizer.tokens = list(layer.get_vocabulary())
    return tokenizer


#: What a preset directory holds: ``overwrite`` replaces a directory holding only these.
PRESET_NAMES = ("config.json", "metadata.json", "tokenizer.json", "preprocessor.json",
                "task.json", "assets", "model.weights.h5", "model_*.weights.h5",
                "model.weights.json", "task.weights.h5", EXPORT_STAMP)


def save_preset(backbone, tokenizer, directory, *, overwrite=False, inputs=(), stamp=None):
    """Write ``backbone`` and ``tokenizer`` as a keras-hub preset directory, complete or not at
    all (``kplm.outputs.atomic_output``: written under a temporary name, then renamed;
    ``overwrite`` replaces a previous preset, never other files; ``inputs``: paths it may not
    replace). A backbone with a non-finite weight is refused before anything is written."""
    from kplm.finite import require_finite
    from kplm.outputs import atomic_output, check_output
    rule = dict(what="--output", overwrite=overwrite, inputs=inputs, names=PRESET_NAMES)
    check_output(directory, **rule)
    tokenizer.require_word_pieces("a keras-hub preset of kplm's Encoder")
    from kplm.models.encoder import EncoderTokenizer
    from kplm.tokenizers.wordpiece import WordPiece
    # A WordPiece is written as the tokenizer class bound to the Encoder, so that
    # keras_hub.tokenizers.Tokenizer.from_preset finds it (its own layer is bound to none).
    layer = (tokenizer.as_layer(EncoderTokenizer) if isinstance(tokenizer, WordPiece)
             else tokenizer.build())
    require_finite(backbone, directory)
    with atomic_output(directory, **rule, stamp=stamp) as tmp:
        backbone.save_to_preset(tmp)
        layer.save_to_preset(tmp)
    return directory
