"""A shallower copy of a Transformer backbone: some of its blocks, all of its other weights
(DistilBERT's student initialisation: every other layer of the teacher)."""
import re

from kplm.errors import ConfigError, shown


def check_keep_layers(keep, key="backbone.keep_layers"):
    """Refuse anything but a non-empty list of distinct, increasing layer indices >= 0.

    Example:
    >>> check_keep_layers([0, 2, 4])
    >>> check_keep_layers([2, 0])
    Traceback (most recent call last):
    ...
    kplm.errors.ConfigError: config key 'backbone.keep_layers': expected a list of increasing layer indices >= 0 (such as [0, 2, 4]), got [2, 0]
    """
    if (not isinstance(keep, list) or not keep
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in keep)
            or any(b <= a for a, b in zip(keep, keep[1:]))):
        raise ConfigError(f"config key '{key}': expected a list of increasing layer indices "
                          f">= 0 (such as [0, 2, 4]), got {shown(keep)}")


#: Names of the Transformer blocks ``select_layers`` picks from, by block-name prefix: kplm's
#: ``Encoder`` / ``Decoder`` (``transformer_layer_{i}``) and ``EncoderDecoder`` (BART:
#: ``encoder_layer_{i}``, ``decoder_layer_{i}``).
_BLOCK = re.compile(r"^(transformer|encoder|decoder)_layer_(\d+)$")


def select_layers(backbone, keep, key="backbone.keep_layers"):
    """A new backbone of the same class and configuration with ``len(keep)`` Transformer blocks:
    block ``i`` is a copy of ``backbone``'s block ``keep[i]``; embeddings, layer norms and pooler
    are copied as they are. Works for kplm's ``Encoder`` and ``Decoder`` (blocks named
    ``transformer_layer_{i}``) and ``EncoderDecoder`` (BART's shape: ``keep`` picks the blocks
    of the encoder and of the decoder alike); another backbone (T5's) is refused.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> teacher = Encoder(vocabulary_size=50, num_layers=4, hidden_dim=16, num_heads=2,
    ...                   intermediate_dim=32, sequence_length=8)
    >>> select_layers(teacher, [0, 3]).num_layers
    2
    """
    check_keep_layers(keep, key)
    blocks = {}
    for layer in backbone.layers:
        match = _BLOCK.match(layer.name)
        if match:
            blocks.setdefault(match.group(1), set()).add(int(match.group(2)))
    if not blocks or any(n != set(range(len(n))) for n in blocks.values()):
        raise ConfigError(f"config key '{key}': {type(backbone).__name__} backbones cannot keep "
                          "some of their layers (kplm's encoders, decoders and BART-shaped "
                          "encoder-decoders can); remove the key")
    total = min(len(n) for n in blocks.values())
    if keep[-1] >= total:
        raise ConfigError(f"config key '{key}': layer {keep[-1]} does not exist; the checkpoint "
                          f"has {total} layers (0-{total - 1})")
    config = backbone.get_config()
    config["num_layers"] = len(keep)
    if "num_decoder_layers" in config:
        config["num_decoder_layers"] = len(keep)
    student = type(backbone).from_config(config)
    source = {layer.name: layer for layer in backbone.layers}
    for layer in student.layers:
        if not layer.weights:
            continue
        name = layer.name
        match = _BLOCK.match(name)
        if match:
            name = f"{match.group(1)}_layer_{keep[int(match.group(2))]}"
        layer.set_weights(source[name].get_weights())
    return student
