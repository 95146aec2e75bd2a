"""kplm's BERT-style encoder backbone."""
import keras
import keras_hub
from keras_hub.layers import PositionEmbedding, ReversibleEmbedding, TransformerEncoder

from kplm.checks import check_activation, check_limits
from kplm.models.activations import feedforward_activation
from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class Encoder(keras_hub.models.Backbone):
    """A BERT-style Transformer encoder: token + position + segment embeddings, then
    ``num_layers`` ``keras_hub.layers.TransformerEncoder`` blocks, and a tanh-pooled ``[CLS]``.

    Inputs are a dict of ``token_ids``, ``segment_ids`` and ``padding_mask`` (int32,
    ``[batch, length]``); outputs a dict of ``sequence_output`` ``[batch, length, hidden_dim]`` and
    ``pooled_output`` ``[batch, hidden_dim]``. As a ``keras_hub`` backbone it saves to a preset
    directory (``save_to_preset``) and serializes in ``.keras`` files.

    Args:
        vocabulary_size: int. Size of the token vocabulary (set by kplm from the tokenizer).
        num_layers: int. Number of Transformer blocks. Defaults to 2.
        num_heads: int. Attention heads per block; must divide ``hidden_dim``. Defaults to 2.
        hidden_dim: int. Width of the residual stream. Defaults to 128.
        intermediate_dim: int. Width of each feed-forward block. Defaults to 512.
        sequence_length: int. Maximum input length (learned position embeddings). Defaults to 128.
        dropout: float. Dropout rate on embeddings, attention and feed-forward. Defaults to 0.1.
        num_segments: int. Number of segment (token type) ids; 0 for none (DistilBERT) and 1
            for a single one (RoBERTa), when ``segment_ids`` is accepted and ignored. Defaults
            to 2.
        activation: str. Feed-forward activation, ``"gelu"`` (exact, as BERT) or
            ``"gelu_approximate"``. Defaults to ``"gelu"``.
        layer_norm_epsilon: float. Defaults to 1e-12 (BERT).
        normalize_first: bool. Pre-layer-norm blocks instead of BERT's post-layer-norm. Defaults
            to False.

    Example:
    >>> import numpy as np
    >>> from kplm.models.encoder import Encoder
    >>> encoder = Encoder(vocabulary_size=100, num_layers=1, hidden_dim=16, num_heads=2,
    ...                   intermediate_dim=32, sequence_length=8)
    >>> out = encoder({"token_ids": np.ones((2, 8), "int32"),
    ...                "segment_ids": np.zeros((2, 8), "int32"),
    ...                "padding_mask": np.ones((2, 8), "int32")})
    >>> tuple(out["sequence_output"].shape), tuple(out["pooled_output"].shape)
    ((2, 8, 16), (2, 16))
    """

    family = "encoder"
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {
        "vocabulary_size": ">= 1", "num_layers": ">= 1", "num_heads": ">= 1",
        "hidden_dim": (">= 1", "multiple of num_heads"), "intermediate_dim": ">= 1",
        "sequence_length": ">= 1", "dropout": "[0, 1)", "layer_norm_epsilon": "> 0",
        "num_segments": ">= 0",
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
        num_segments: int = 2,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-12,
        normalize_first: bool = False,
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
        self.segment_embedding = keras.layers.Embedding(
            input_dim=num_segments, output_dim=hidden_dim,
            embeddings_initializer=kernel_initializer(), dtype=dtype,
            name="segment_embedding") if num_segments else None
        self.embeddings_add = keras.layers.Add(dtype=dtype, name="embeddings_add")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="embeddings_layer_norm")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype,
                                                       name="embeddings_dropout")
        act = feedforward_activation(activation)
        self.transformer_layers = [
            TransformerEncoder(
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
        self.pooled_dense = keras.layers.Dense(
            hidden_dim, kernel_initializer=kernel_initializer(), activation="tanh", dtype=dtype,
            name="pooled_dense")

        # === Functional Model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        tokens = self.token_embedding(token_ids)
        embedded = [tokens, self.position_embedding(tokens)]
        if self.segment_embedding is not None:
            types = segment_ids
            if num_segments == 1:  # a single type (RoBERTa): every position uses it
                types = keras.ops.zeros_like(segment_ids)
            embedded.append(self.segment_embedding(types))
        x = self.embeddings_add(embedded)
        x = self.embeddings_dropout(self.embeddings_layer_norm(x))
        for layer in self.transformer_layers:
            x = layer(x, padding_mask=padding_mask)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        pooled = self.pooled_dense(x[:, 0, :])
        super().__init__(
            inputs={"token_ids": token_ids, "segment_ids": segment_ids,
                    "padding_mask": padding_mask},
            outputs={"sequence_output": x, "pooled_output": pooled},
            dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.sequence_length = sequence_length
        self.dropout = dropout
        self.num_segments = num_segments
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first

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
            "num_segments": self.num_segments,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "normalize_first": self.normalize_first,
        })
        return config

    @classmethod
    def check_config(cls, section, path):
        """Config-time checks beyond ``limits`` (``kplm.config.check_arguments``)."""
        check_activation(section.get("activation"), path)


@keras.saving.register_keras_serializable(package="kplm")
class EncoderTokenizer(keras_hub.models.BertTokenizer):
    """keras-hub's BERT WordPiece tokenizer, paired with kplm's ``Encoder`` so that
    ``keras_hub.tokenizers.Tokenizer.from_preset`` finds it in a preset kplm wrote. kplm's
    ``WordPiece`` tokenizers build this layer.

    Example:
    >>> tok = EncoderTokenizer(vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
    >>> tok.backbone_cls.__name__
    'Encoder'
    """

    backbone_cls = Encoder
