"""kplm's encoder-decoder (BART/T5-style) backbone."""
from typing import Optional

import keras
import keras_hub
from keras_hub.layers import (PositionEmbedding, ReversibleEmbedding, TransformerDecoder,
                              TransformerEncoder)

from kplm.checks import check_activation, check_limits
from kplm.models.activations import feedforward_activation
from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class EncoderDecoder(keras_hub.models.Backbone):
    """A Transformer encoder-decoder: ``num_layers`` ``keras_hub.layers.TransformerEncoder``
    blocks over the source, ``num_decoder_layers`` ``TransformerDecoder`` blocks (causal
    self-attention, then cross-attention to the encoder output) over the target. One
    ``ReversibleEmbedding`` embeds tokens on both sides (and projects back to the vocabulary in
    ``kplm.models.seq2seq_lm.Seq2SeqLM``); each side has its own learned position embedding.

    Inputs are a dict of ``encoder_token_ids``, ``encoder_padding_mask``, ``decoder_token_ids``
    and ``decoder_padding_mask`` (int32, ``[batch, length]``); outputs a dict of
    ``encoder_sequence_output`` and ``decoder_sequence_output`` (``[batch, length,
    hidden_dim]``). ``call_encoder`` / ``call_decoder`` run each side alone (generation).

    Args:
        vocabulary_size: int. Size of the token vocabulary (set by kplm from the tokenizer).
        num_layers: int. Encoder blocks. Defaults to 2.
        num_decoder_layers: int or None. Decoder blocks; None: ``num_layers``. Defaults to None.
        num_heads: int. Attention heads per block; must divide ``hidden_dim``. Defaults to 2.
        hidden_dim: int. Width of the residual stream. Defaults to 128.
        intermediate_dim: int. Width of each feed-forward block. Defaults to 512.
        sequence_length: int. Maximum encoder (source) length. Defaults to 128.
        decoder_sequence_length: int or None. Maximum decoder (target) length; None:
            ``sequence_length``. Defaults to None.
        dropout: float. Dropout on embeddings, attention and feed-forward. Defaults to 0.1.
        activation: str. Feed-forward activation, ``"gelu"`` or ``"gelu_approximate"`` or a
            Keras activation name. Defaults to ``"gelu"``.
        layer_norm_epsilon: float. Defaults to 1e-5 (BART).
        normalize_first: bool. Pre-layer-norm blocks (plus a final layer norm on each side)
            instead of BART's post-layer-norm. Defaults to False.

    Example:
    >>> import numpy as np
    >>> from kplm.models.encoder_decoder import EncoderDecoder
    >>> model = EncoderDecoder(vocabulary_size=100, num_layers=1, hidden_dim=16, num_heads=2,
    ...                        intermediate_dim=32, sequence_length=8,
    ...                        decoder_sequence_length=6)
    >>> out = model({"encoder_token_ids": np.ones((2, 8), "int32"),
    ...              "encoder_padding_mask": np.ones((2, 8), "int32"),
    ...              "decoder_token_ids": np.ones((2, 6), "int32"),
    ...              "decoder_padding_mask": np.ones((2, 6), "int32")})
    >>> tuple(out["encoder_sequence_output"].shape), tuple(out["decoder_sequence_output"].shape)
    ((2, 8, 16), (2, 6, 16))
    """

    family = "encoder_decoder"
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {
        "vocabulary_size": ">= 1", "num_layers": ">= 1", "num_heads": ">= 1",
        "hidden_dim": (">= 1", "multiple of num_heads"), "intermediate_dim": ">= 1",
        "sequence_length": ">= 1", "dropout": "[0, 1)", "layer_norm_epsilon": "> 0",
        "num_decoder_layers": ">= 1", "decoder_sequence_length": ">= 1",
    }

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int = 2,
        num_decoder_layers: Optional[int] = None,
        num_heads: int = 2,
        hidden_dim: int = 128,
        intermediate_dim: int = 512,
        sequence_length: int = 128,
        decoder_sequence_length: Optional[int] = None,
        dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-5,
        normalize_first: bool = False,
        dtype=None,
        **kwargs,
    ):
        check_limits(self.limits, locals(), "backbone")
        check_activation(activation, "backbone")
        num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
        decoder_sequence_length = decoder_sequence_length or sequence_length
        act = feedforward_activation(activation)

        def layer_norm(name):
            return keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype,
                                                   name=name)

        # === Layers ===
        self.token_embedding = ReversibleEmbedding(
            input_dim=vocabulary_size, output_dim=hidden_dim,
            embeddings_initializer=kernel_initializer(), dtype=dtype, name="token_embedding")
        self.encoder_position_embedding = PositionEmbedding(
            sequence_length=sequence_length, initializer=kernel_initializer(), dtype=dtype,
            name="encoder_position_embedding")
        self.decoder_position_embedding = PositionEmbedding(
            sequence_length=decoder_sequence_length, initializer=kernel_initializer(),
            dtype=dtype, name="decoder_position_embedding")
        self.encoder_embeddings_layer_norm = layer_norm("encoder_embeddings_layer_norm")
        self.decoder_embeddings_layer_norm = layer_norm("decoder_embeddings_layer_norm")
        self.encoder_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="encoder_embeddings_dropout")
        self.decoder_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="decoder_embeddings_dropout")
        block = dict(num_heads=num_heads, intermediate_dim=intermediate_dim, activation=act,
                     dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                     normalize_first=normalize_first, kernel_initializer=kernel_initializer(),
                     dtype=dtype)
        self.encoder_transformer_layers = [
            TransformerEncoder(name=f"encoder_layer_{i}", **block) for i in range(num_layers)]
        self.decoder_transformer_layers = [
            TransformerDecoder(name=f"decoder_layer_{i}", **block)
            for i in range(num_decoder_layers)]
        self.encoder_final_layer_norm = (
            layer_norm("encoder_final_layer_norm") if normalize_first else None)
        self.decoder_final_layer_norm = (
            layer_norm("decoder_final_layer_norm") if normalize_first else None)

        # === Functional Model ===
        encoder_token_ids = keras.Input(shape=(None,), dtype="int32", name="encoder_token_ids")
        encoder_padding_mask = keras.Input(shape=(None,), dtype="int32",
                                           name="encoder_padding_mask")
        decoder_token_ids = keras.Input(shape=(None,), dtype="int32", name="decoder_token_ids")
        decoder_padding_mask = keras.Input(shape=(None,), dtype="int32",
                                           name="decoder_padding_mask")
        encoded = self.call_encoder(encoder_token_ids, encoder_padding_mask)
        decoded = self.call_decoder(decoder_token_ids, encoded, encoder_padding_mask,
                                    decoder_padding_mask=decoder_padding_mask)
        super().__init__(
            inputs={"encoder_token_ids": encoder_token_ids,
                    "encoder_padding_mask": encoder_padding_mask,
                    "decoder_token_ids": decoder_token_ids,
                    "decoder_padding_mask": decoder_padding_mask},
            outputs={"encoder_sequence_output": encoded, "decoder_sequence_output": decoded},
            dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.sequence_length = sequence_length
        self.decoder_sequence_length = decoder_sequence_length
        self.dropout = dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first

    def call_encoder(self, token_ids, padding_mask, training=None):
        """Source ids and padding mask ``[batch, source_length]`` -> encoder hidden states."""
        tokens = self.token_embedding(token_ids)
        x = tokens + self.encoder_position_embedding(tokens)
        x = self.encoder_embeddings_dropout(self.encoder_embeddings_layer_norm(x),
                                            training=training)
        for layer in self.encoder_transformer_layers:
            x = layer(x, padding_mask=padding_mask, training=training)
        if self.encoder_final_layer_norm is not None:
            x = self.encoder_final_layer_norm(x)
        return x

    def call_decoder(self, token_ids, encoder_output, encoder_padding_mask, *,
                     decoder_padding_mask=None, self_attention_cache=None,
                     self_attention_cache_update_index=None, cross_attention_cache=None,
                     cross_attention_cache_update_index=None, training=None):
        """Target ids -> decoder hidden states (causal self-attention, cross-attention).

        With caches (``[batch, num_decoder_layers, 2, length, num_heads, head_dim]``, both or
        neither) ``token_ids`` start at position ``self_attention_cache_update_index`` and the
        result is ``(hidden, self_attention_cache, cross_attention_cache)``; a
        ``cross_attention_cache_update_index`` of None reuses the cached encoder keys/values.
        """
        tokens = self.token_embedding(token_ids)
        start = self_attention_cache_update_index if self_attention_cache is not None else 0
        x = tokens + self.decoder_position_embedding(tokens, start_index=start)
        x = self.decoder_embeddings_dropout(self.decoder_embeddings_layer_norm(x),
                                            training=training)
        cached = self_attention_cache is not None
        self_caches, cross_caches = [], []
        for i, layer in enumerate(self.decoder_transformer_layers):
            if not cached:
                x = layer(x, encoder_sequence=encoder_output,
                          decoder_padding_mask=decoder_padding_mask,
                          encoder_padding_mask=encoder_padding_mask, training=training)
                continue
            x, self_cache, cross_cache = layer(
                x, encoder_sequence=encoder_output, encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=self_attention_cache[:, i, ...],
                self_attention_cache_update_index=self_attention_cache_update_index,
                cross_attention_cache=cross_attention_cache[:, i, ...],
                cross_attention_cache_update_index=cross_attention_cache_update_index,
                training=training)
            self_caches.append(self_cache)
            cross_caches.append(cross_cache)
        if self.decoder_final_layer_norm is not None:
            x = self.decoder_final_layer_norm(x)
        if not cached:
            return x
        self_attention_cache = keras.ops.stack(self_caches, axis=1)
        if cross_attention_cache_update_index is not None:
            cross_attention_cache = keras.ops.stack(cross_caches, axis=1)
        return x, self_attention_cache, cross_attention_cache

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "sequence_length": self.sequence_length,
            "decoder_sequence_length": self.decoder_sequence_length,
            "dropout": self.dropout,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "normalize_first": self.normalize_first,
        })
        return config

    @classmethod
    def check_config(cls, section, path):
        """Config-time checks beyond ``limits`` (``kplm.config.check_arguments``)."""
        check_activation(section.get("activation"), path)
