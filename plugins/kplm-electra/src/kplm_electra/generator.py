"""The ELECTRA generator: a small Transformer encoder that reads the discriminator's embeddings."""
import keras
from keras_hub.layers import TransformerEncoder

from kplm.models.activations import feedforward_activation


def _initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)  # BERT's, as kplm's Encoder uses


@keras.saving.register_keras_serializable(package="kplm_electra")
class ElectraGenerator(keras.layers.Layer):
    """The body of ELECTRA's generator: ``num_layers`` ``keras_hub.layers.TransformerEncoder``
    blocks of width ``hidden_dim`` over embeddings it does not own.

    ELECTRA (Clark et al. 2020) shares the token, position and segment embeddings between the
    generator and the discriminator; the generator is narrower, so the shared embeddings
    (``embedding_dim`` wide) are projected to ``hidden_dim`` by a dense layer first (left out
    when the widths are equal), as in the paper's code. The blocks mirror kplm's ``Encoder``
    (same activation, layer-norm epsilon and pre/post layer norm).

    Input: embeddings ``[batch, length, embedding_dim]`` and ``padding_mask``
    ``[batch, length]``; output ``[batch, length, hidden_dim]``.

    Args:
        embedding_dim: int. Width of the embeddings it reads (the discriminator's
            ``hidden_dim``).
        hidden_dim: int. Width of the generator.
        num_layers: int. Transformer blocks.
        num_heads: int. Attention heads per block; must divide ``hidden_dim``.
        intermediate_dim: int. Width of each feed-forward block.
        dropout: float. Dropout in the blocks. Defaults to 0.1.
        activation: str. ``"gelu"`` or ``"gelu_approximate"`` (or any Keras activation name).
            Defaults to ``"gelu"``.
        layer_norm_epsilon: float. Defaults to 1e-12.
        normalize_first: bool. Pre-layer-norm blocks (then a final layer norm). Defaults to
            False.

    Example:
    >>> import numpy as np
    >>> generator = ElectraGenerator(embedding_dim=16, hidden_dim=8, num_layers=1, num_heads=1,
    ...                              intermediate_dim=16)
    >>> tuple(generator(np.ones((2, 5, 16), "float32"), np.ones((2, 5), "int32")).shape)
    (2, 5, 8)
    """

    def __init__(self, embedding_dim, hidden_dim, num_layers, num_heads, intermediate_dim,
                 dropout=0.1, activation="gelu", layer_norm_epsilon=1e-12, normalize_first=False,
                 **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.projection = None
        if embedding_dim != hidden_dim:
            self.projection = keras.layers.Dense(
                hidden_dim, kernel_initializer=_initializer(), dtype=self.dtype_policy,
                name="embeddings_projection")
        act = feedforward_activation(activation)  # as kplm's Encoder
        self.transformer_layers = [
            TransformerEncoder(
                num_heads=num_heads, intermediate_dim=intermediate_dim, activation=act,
                dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                normalize_first=normalize_first, kernel_initializer=_initializer(),
                dtype=self.dtype_policy, name=f"transformer_layer_{i}")
            for i in range(num_layers)
        ]
        self.final_layer_norm = (
            keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=self.dtype_policy,
                                            name="final_layer_norm")
            if normalize_first else None)

        # === Config ===
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first

    def build(self, inputs_shape, padding_mask_shape=None):
        shape = tuple(inputs_shape)
        if self.projection is not None:
            self.projection.build(shape)
            shape = shape[:-1] + (self.hidden_dim,)
        for layer in self.transformer_layers:
            layer.build(shape)
        if self.final_layer_norm is not None:
            self.final_layer_norm.build(shape)
        self.built = True

    def call(self, inputs, padding_mask=None, training=None):
        x = inputs if self.projection is None else self.projection(inputs)
        for layer in self.transformer_layers:
            x = layer(x, padding_mask=padding_mask, training=training)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x

    def compute_output_shape(self, inputs_shape, padding_mask_shape=None):
        return tuple(inputs_shape)[:-1] + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "embedding_dim": self.embedding_dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "normalize_first": self.normalize_first,
        })
        return config
