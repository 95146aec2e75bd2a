"""kplm's GPT-style decoder backbone."""
import keras
import keras_hub
from keras import ops
from keras_hub.layers import PositionEmbedding, ReversibleEmbedding, TransformerDecoder

from kplm.checks import check_activation, check_limits
from kplm.models.activations import feedforward_activation
from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class Decoder(keras_hub.models.Backbone):
    """A GPT-style Transformer decoder: token + position embeddings, then ``num_layers``
    causally masked ``keras_hub.layers.TransformerDecoder`` blocks (no cross-attention) and, with
    pre-layer-norm blocks (GPT-2, the default), a final layer norm.

    Inputs are a dict of ``token_ids`` and ``padding_mask`` (int32, ``[batch, length]``); the
    output is a dict with ``sequence_output`` ``[batch, length, hidden_dim]``, where position
    ``t`` has seen tokens ``0..t`` only. ``call_with_cache`` runs a few new positions against a
    per-layer key/value cache (``build_cache``) for fast autoregressive generation.

    Args:
        vocabulary_size: int. Size of the token vocabulary (set by kplm from the tokenizer).
        num_layers: int. Number of Transformer blocks. Defaults to 2.
        num_heads: int. Attention heads per block; must divide ``hidden_dim``. Defaults to 2.
        hidden_dim: int. Width of the residual stream. Defaults to 128.
        intermediate_dim: int. Width of each feed-forward block. Defaults to 512.
        sequence_length: int. Maximum length (learned position embeddings). Defaults to 128.
        dropout: float. Dropout rate on embeddings, attention and feed-forward. Defaults to 0.1.
        activation: str. Feed-forward activation, ``"gelu_approximate"`` (GPT-2's tanh form) or
            ``"gelu"`` (exact), or any Keras activation name. Defaults to
            ``"gelu_approximate"``.
        layer_norm_epsilon: float. Defaults to 1e-5 (GPT-2).
        normalize_first: bool. Pre-layer-norm blocks plus a final layer norm (GPT-2); False for
            post-layer-norm blocks (GPT-1). Defaults to True.

    Example:
    >>> import numpy as np
    >>> from kplm.models.decoder import Decoder
    >>> decoder = Decoder(vocabulary_size=100, num_layers=1, hidden_dim=16, num_heads=2,
    ...                   intermediate_dim=32, sequence_length=8)
    >>> out = decoder({"token_ids": np.ones((2, 8), "int32"),
    ...                "padding_mask": np.ones((2, 8), "int32")})
    >>> tuple(out["sequence_output"].shape), decoder.family
    ((2, 8, 16), 'decoder')
    """

    family = "decoder"
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {
        "vocabulary_size": ">= 1", "num_layers": ">= 1", "num_heads": ">= 1",
        "hidden_dim": (">= 1", "multiple of num_heads"), "intermediate_dim": ">= 1",
        "sequence_length": ">= 1", "dropout": "[0, 1)", "layer_norm_epsilon": "> 0",
    }

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int = 2,
        num_heads: int = 2,
        hidden_dim: int = 128,
        intermediate_dim: int = 512,
        sequence_length: int = 128,
        dropout: float = 0.1,
        activation: str = "gelu_approximate",
        layer_norm_epsilon: float = 1e-5,
        normalize_first: bool = True,
        dtype=None,
        **kwargs,
    ):
        check_limits(self.limits, locals(), "backbone")
        check_activation(activation, "backbone")
        # === Layers ===
        self.token_embedding = ReversibleEmbedding(
            input_dim=vocabulary_size, output_dim=hidden_dim,
            embeddings_initializer=kernel_initializer(), dtype=dtype, name="token_embedding")
        self.position_embedding = PositionEmbedding(
            sequence_length=sequence_length, initializer=kernel_initializer(), dtype=dtype,
            name="position_embedding")
        self.embeddings_add = keras.layers.Add(dtype=dtype, name="embeddings_add")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype,
                                                       name="embeddings_dropout")
        act = feedforward_activation(activation)
        self.transformer_layers = [
            TransformerDecoder(
                num_heads=num_heads, intermediate_dim=intermediate_dim, activation=act,
                dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                normalize_first=normalize_first, kernel_initializer=kernel_initializer(),
                dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(num_layers)
        ]
        self.final_layer_norm = (
            keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype,
                                            name="final_layer_norm")
            if normalize_first else None)

        # === Functional Model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        x = self._embed(token_ids)
        for layer in self.transformer_layers:
            x = layer(x, decoder_padding_mask=padding_mask)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs={"sequence_output": x}, dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.sequence_length = sequence_length
        self.dropout = dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first

    def _embed(self, token_ids, start_index=0):
        tokens = self.token_embedding(token_ids)
        positions = self.position_embedding(tokens, start_index=start_index)
        return self.embeddings_dropout(self.embeddings_add((tokens, positions)))

    # --- autoregressive decoding ----------------------------------------------------------
    def build_cache(self, batch_size, max_length):
        """An empty key/value cache ``[batch, num_layers, 2, max_length, num_heads, head_dim]``
        (the layout of ``keras_hub``'s GPT-2; every leaf batch-first, as beam search needs)."""
        shape = [batch_size, self.num_layers, 2, max_length, self.num_heads,
                 self.hidden_dim // self.num_heads]
        return ops.zeros(shape, dtype=self.compute_dtype)

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Run ``token_ids`` ``[batch, n]`` as positions ``cache_update_index ..
        cache_update_index + n - 1``, attending to the cached keys/values of earlier positions
        and writing their own into the cache. Returns ``(sequence_output, cache)``."""
        x = self._embed(token_ids, start_index=cache_update_index)
        caches = []
        for i, layer in enumerate(self.transformer_layers):
            x, layer_cache = layer(x, self_attention_cache=cache[:, i, ...],
                                   self_attention_cache_update_index=cache_update_index)
            caches.append(layer_cache)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x, ops.stack(caches, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "sequence_length": self.sequence_length,
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
