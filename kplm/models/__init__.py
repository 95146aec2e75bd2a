"""Backbones and task models. Importing this package does not import TensorFlow: the backbones
are registered lazily by their import path."""
from kplm.hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    register("encoder", "kplm.models.encoder:Encoder")
    register("decoder", "kplm.models.decoder:Decoder")
    register("encoder_decoder", "kplm.models.encoder_decoder:EncoderDecoder")
