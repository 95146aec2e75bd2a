"""T5's encoder-decoder (Raffel et al. 2020; v1.1's gated feed-forward too), for Hugging Face
``t5`` checkpoints (``kplm.pretrained.t5``).

T5 differs from kplm's BART-style ``EncoderDecoder`` in every block, so it is a backbone of its
own with the same interface (``call_encoder``, ``call_decoder`` with caches, ``family =
"encoder_decoder"``), which the ``seq2seq`` head, ``kplm.models.seq2seq_lm.Seq2SeqLM``
generation and the span-corruption / denoising objectives use unchanged:

- **no position embeddings**: a learned bias per attention head and *bucket* of relative
  distance (exact up to ``num_buckets / 4``, then logarithmic up to ``max_distance``;
  bidirectional in the encoder, causal in the decoder), computed by each side's first block
  and added to every block's self-attention logits;
- **RMS layer norm** without bias (``keras.layers.RMSNormalization``), **before** each sublayer
  (pre-norm), plus a final one on each side;
- **unscaled attention** (no ``1/sqrt(d)``: T5 folds it into the initialisation), no biases
  anywhere, ``num_heads * key_value_dim`` wide;
- a **ReLU** feed-forward (v1.0) or a **gated** one (v1.1: ``act(x W0) * (x W1)``, GELU);
- logits through the tied embedding with the hidden states scaled by ``hidden_dim ** -0.5``
  (v1.0), or a separate LM head (v1.1, ``tie_embeddings=False``): ``logits(hidden)``.

Layers are Keras' (``Dense``, ``Embedding``, ``RMSNormalization``, ``Dropout``) and keras_hub's
``ReversibleEmbedding``; the attention with its relative bias and caches is here because no
public keras_hub layer adds T5's bias (keras_hub's own T5 layers are private).

Example:
>>> import numpy as np
>>> model = T5EncoderDecoder(vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8,
...                          intermediate_dim=16, sequence_length=6)
>>> out = model({"encoder_token_ids": np.ones((2, 6), "int32"),
...              "encoder_padding_mask": np.ones((2, 6), "int32"),
...              "decoder_token_ids": np.ones((2, 4), "int32"),
...              "decoder_padding_mask": np.ones((2, 4), "int32")})
>>> hidden = out["decoder_sequence_output"]
>>> tuple(hidden.shape), tuple(model.logits(hidden).shape)
((2, 4, 8), (2, 4, 40))
"""
import math
from typing import Optional

import keras
import keras_hub
from keras import ops

from kplm.checks import check_limits
from kplm.models.initializers import kernel_initializer

_NEGATIVE = -1e9


def relative_buckets(relative_position, bidirectional, num_buckets, max_distance):
    """T5's bucket of each ``key - query`` distance (``int32`` tensor)."""
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    scaled = (ops.log(ops.cast(ops.maximum(distance, 1), "float32") / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = ops.minimum(max_exact + ops.cast(scaled, "int32"), num_buckets - 1)
    return buckets + ops.where(distance < max_exact, distance, large)


class T5Attention(keras.layers.Layer):
    """Multi-head attention as T5 computes it: no scaling, no biases, an additive bias (the
    relative position bias and the mask) on the logits; optional key/value cache
    ``[batch, 2, length, heads, key_value_dim]``."""

    def __init__(self, num_heads, key_value_dim, hidden_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_value_dim, self.hidden_dim = num_heads, key_value_dim, hidden_dim
        self.dropout = dropout
        inner = num_heads * key_value_dim

        def dense(name, units):
            return keras.layers.Dense(units, use_bias=False,
                                      kernel_initializer=kernel_initializer(),
                                      dtype=self.dtype_policy, name=name)
        self.query, self.key, self.value = (dense(n, inner) for n in ("query", "key", "value"))
        self.output_dense = dense("output", hidden_dim)
        self.attention_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.query.build(input_shape)
        self.key.build(input_shape)
        self.value.build(input_shape)
        self.output_dense.build(input_shape[:-1] + (self.num_heads * self.key_value_dim,))
        self.built = True

    def _heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.num_heads, self.key_value_dim))

    def call(self, x, source, bias, cache=None, cache_update_index=None, training=None):
        """``bias`` ``[batch or 1, heads, queries, keys]``. With ``cache``: keys and values of
        ``source`` are written at ``cache_update_index`` (None: the cache is read as it is)
        and attention runs over the whole cache; returns ``(output, cache)``."""
        query = self._heads(self.query(x))
        if cache is not None:
            if cache_update_index is not None:
                key, value = self._heads(self.key(source)), self._heads(self.value(source))
                start = [0, cache_update_index, 0, 0]
                cache = ops.stack([ops.slice_update(cache[:, 0], start, key),
                                   ops.slice_update(cache[:, 1], start, value)], axis=1)
            key, value = cache[:, 0], cache[:, 1]
        else:
            key, value = self._heads(self.key(source)), self._heads(self.value(source))
        logits = ops.einsum("bqhd,bkhd->bhqk", ops.cast(query, "float32"),
                            ops.cast(key, "float32")) + ops.cast(bias, "float32")
        weights = self.attention_dropout(ops.softmax(logits, axis=-1), training=training)
        out = ops.einsum("bhqk,bkhd->bqhd", ops.cast(weights, value.dtype), value)
        shape = ops.shape(out)
        out = self.output_dense(ops.reshape(out, (shape[0], shape[1], -1)))
        return (out, cache) if cache is not None else out

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "key_value_dim": self.key_value_dim, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout}


class T5FeedForward(keras.layers.Layer):
    """``wo(act(x wi))``, or gated ``wo(act(x wi_0) * (x wi_1))``; no biases."""

    def __init__(self, hidden_dim, intermediate_dim, activation="relu", gated=False, dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim, self.intermediate_dim = hidden_dim, intermediate_dim
        self.activation, self.gated, self.dropout = activation, gated, dropout

        def dense(name, units):
            return keras.layers.Dense(units, use_bias=False,
                                      kernel_initializer=kernel_initializer(),
                                      dtype=self.dtype_policy, name=name)
        self.input_dense = dense("input", intermediate_dim)
        self.gate_dense = dense("gate", intermediate_dim) if gated else None
        self.output_dense = dense("output", hidden_dim)
        self.inner_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.input_dense.build(input_shape)
        if self.gate_dense is not None:
            self.gate_dense.build(input_shape)
        self.output_dense.build(input_shape[:-1] + (self.intermediate_dim,))
        self.built = True

    def _act(self, x):
        if self.activation == "gelu_approximate":
            return keras.activations.gelu(x, approximate=True)
        if self.activation == "gelu":
            return keras.activations.gelu(x, approximate=False)
        return keras.activations.get(self.activation)(x)

    def call(self, x, training=None):
        hidden = self._act(self.input_dense(x))
        if self.gate_dense is not None:
            hidden = hidden * self.gate_dense(x)
        return self.output_dense(self.inner_dropout(hidden, training=training))

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim, "activation": self.activation,
                "gated": self.gated, "dropout": self.dropout}


class T5Block(keras.layers.Layer):
    """One pre-norm T5 block: self-attention, cross-attention (decoder), feed-forward, each
    ``x + dropout(sublayer(rms_norm(x)))``."""

    def __init__(self, num_heads, key_value_dim, hidden_dim, intermediate_dim, activation,
                 gated, dropout, layer_norm_epsilon, decoder, **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder
        self._config = dict(num_heads=num_heads, key_value_dim=key_value_dim,
                            hidden_dim=hidden_dim, intermediate_dim=intermediate_dim,
                            activation=activation, gated=gated, dropout=dropout,
                            layer_norm_epsilon=layer_norm_epsilon, decoder=decoder)

        def norm(name):
            return keras.layers.RMSNormalization(epsilon=layer_norm_epsilon,
                                                 dtype=self.dtype_policy, name=name)
        self.self_attention_norm = norm("self_attention_norm")
        self.self_attention = T5Attention(num_heads, key_value_dim, hidden_dim, dropout=dropout,
                                          dtype=self.dtype_policy, name="self_attention")
        if decoder:
            self.cross_attention_norm = norm("cross_attention_norm")
            self.cross_attention = T5Attention(num_heads, key_value_dim, hidden_dim,
                                               dropout=dropout, dtype=self.dtype_policy,
                                               name="cross_attention")
        self.feedforward_norm = norm("feedforward_norm")
        self.feedforward = T5FeedForward(hidden_dim, intermediate_dim, activation=activation,
                                         gated=gated, dropout=dropout, dtype=self.dtype_policy,
                                         name="feedforward")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        for layer in (self.self_attention_norm, self.self_attention, self.feedforward_norm,
                      self.feedforward) + ((self.cross_attention_norm, self.cross_attention)
                                           if self.decoder else ()):
            layer.build(input_shape)
        self.built = True

    def call(self, x, bias, encoder_output=None, cross_bias=None, self_cache=None,
             self_cache_update_index=None, cross_cache=None, cross_cache_update_index=None,
             training=None):
        normed = self.self_attention_norm(x)
        if self_cache is not None:
            out, self_cache = self.self_attention(normed, normed, bias, cache=self_cache,
                                                  cache_update_index=self_cache_update_index,
                                                  training=training)
        else:
            out = self.self_attention(normed, normed, bias, training=training)
        x = x + self.residual_dropout(out, training=training)
        if self.decoder:
            normed = self.cross_attention_norm(x)
            if cross_cache is not None:
                out, cross_cache = self.cross_attention(
                    normed, encoder_output, cross_bias, cache=cross_cache,
                    cache_update_index=cross_cache_update_index, training=training)
            else:
                out = self.cross_attention(normed, encoder_output, cross_bias, training=training)
            x = x + self.residual_dropout(out, training=training)
        x = x + self.residual_dropout(self.feedforward(self.feedforward_norm(x),
                                                       training=training), training=training)
        return (x, self_cache, cross_cache) if self_cache is not None else x

    def get_config(self):
        return {**super().get_config(), **self._config}


def _mask_bias(mask):
    """A ``[batch, keys]`` (or ``[batch or 1, queries, keys]``) 0/1 mask as additive logits
    ``[batch, 1, queries or 1, keys]``."""
    mask = ops.cast(mask, "float32")
    if len(mask.shape) == 2:
        mask = mask[:, None, :]
    return (1.0 - mask[:, None, :, :]) * _NEGATIVE


class T5Stack(keras.layers.Layer):
    """T5's encoder or decoder stack over embedded tokens: the relative position bias (its
    own), the blocks, the final RMS norm."""

    def __init__(self, num_layers, num_heads, key_value_dim, hidden_dim, intermediate_dim,
                 activation, gated, dropout, layer_norm_epsilon, num_buckets, max_distance,
                 decoder, **kwargs):
        super().__init__(**kwargs)
        self._config = dict(num_layers=num_layers, num_heads=num_heads,
                            key_value_dim=key_value_dim, hidden_dim=hidden_dim,
                            intermediate_dim=intermediate_dim, activation=activation,
                            gated=gated, dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                            num_buckets=num_buckets, max_distance=max_distance, decoder=decoder)
        self.decoder, self.num_buckets, self.max_distance = decoder, num_buckets, max_distance
        self.relative_attention_bias = keras.layers.Embedding(
            num_buckets, num_heads, dtype=self.dtype_policy, name="relative_attention_bias")
        self.blocks = [T5Block(num_heads, key_value_dim, hidden_dim, intermediate_dim,
                               activation, gated, dropout, layer_norm_epsilon, decoder,
                               dtype=self.dtype_policy, name=f"layer_{i}")
                       for i in range(num_layers)]
        self.final_norm = keras.layers.RMSNormalization(epsilon=layer_norm_epsilon,
                                                        dtype=self.dtype_policy,
                                                        name="final_norm")
        self.input_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.relative_attention_bias.build(None)
        for block in self.blocks:
            block.build(input_shape)
        self.final_norm.build(input_shape)
        self.built = True

    def _position_bias(self, queries, keys):
        relative = keys[None, :] - queries[:, None]
        buckets = relative_buckets(relative, not self.decoder, self.num_buckets,
                                   self.max_distance)
        return ops.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]

    def call(self, x, padding_mask=None, encoder_output=None, encoder_padding_mask=None,
             self_attention_cache=None, self_attention_cache_update_index=None,
             cross_attention_cache=None, cross_attention_cache_update_index=None,
             training=None):
        x = self.input_dropout(x, training=training)
        length = ops.shape(x)[1]
        cached = self_attention_cache is not None
        start = ops.cast(self_attention_cache_update_index if cached else 0, "int32")
        queries = ops.arange(length, dtype="int32") + start
        keys = (ops.arange(ops.shape(self_attention_cache)[3], dtype="int32") if cached
                else ops.arange(length, dtype="int32"))
        bias = self._position_bias(queries, keys)
        if not self.decoder:
            bias = bias + _mask_bias(padding_mask)
            for block in self.blocks:
                x = block(x, bias, training=training)
            return self.output_dropout(self.final_norm(x), training=training)
        visible = ops.cast(keys[None, :] <= queries[:, None], "int32")[None]
        if padding_mask is not None and not cached:
            visible = visible * ops.cast(padding_mask, "int32")[:, None, :]
        bias = bias + _mask_bias(visible)
        cross_bias = _mask_bias(encoder_padding_mask)
        self_caches, cross_caches = [], []
        for i, block in enumerate(self.blocks):
            if cached:
                x, self_cache, cross_cache = block(
                    x, bias, encoder_output, cross_bias,
                    self_cache=self_attention_cache[:, i], self_cache_update_index=start,
                    cross_cache=cross_attention_cache[:, i],
                    cross_cache_update_index=cross_attention_cache_update_index,
                    training=training)
                self_caches.append(self_cache)
                cross_caches.append(cross_cache)
            else:
                x = block(x, bias, encoder_output, cross_bias, training=training)
        x = self.output_dropout(self.final_norm(x), training=training)
        if not cached:
            return x
        self_attention_cache = ops.stack(self_caches, axis=1)
        if cross_attention_cache_update_index is not None:
            cross_attention_cache = ops.stack(cross_caches, axis=1)
        return x, self_attention_cache, cross_attention_cache

    def get_config(self):
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="kplm")
class T5EncoderDecoder(keras_hub.models.Backbone):
    """T5's encoder-decoder (see the module).

    Inputs and outputs as kplm's ``EncoderDecoder``: a dict of ``encoder_token_ids``,
    ``encoder_padding_mask``, ``decoder_token_ids``, ``decoder_padding_mask`` -> a dict of
    ``encoder_sequence_output`` and ``decoder_sequence_output``.

    Args:
        vocabulary_size: int.
        num_layers: int. Encoder blocks. Defaults to 2.
        num_decoder_layers: int or None. None: ``num_layers``.
        num_heads: int. Defaults to 2.
        hidden_dim: int. ``d_model``. Defaults to 128.
        key_value_dim: int or None. Per-head width (``d_kv``); None: ``hidden_dim // num_heads``.
        intermediate_dim: int. ``d_ff``. Defaults to 512.
        sequence_length: int. The longest source kplm packs (T5 has no position table).
            Defaults to 512.
        decoder_sequence_length: int or None. The longest target; None: ``sequence_length``.
        dropout: float. Defaults to 0.1.
        activation: str. ``"relu"`` (v1.0), ``"gelu_approximate"`` (v1.1's gated-gelu),
            ``"gelu"``, ``"silu"``. Defaults to ``"relu"``.
        gated: bool. The gated feed-forward of T5 v1.1. Defaults to False.
        layer_norm_epsilon: float. Defaults to 1e-6.
        relative_attention_num_buckets: int. Defaults to 32.
        relative_attention_max_distance: int. Defaults to 128.
        tie_embeddings: bool. Logits through the token embedding (scaled hidden states, T5
            v1.0) or a separate LM head (v1.1). Defaults to True.
    """

    family = "encoder_decoder"
    limits = {"vocabulary_size": ">= 1", "num_layers": ">= 1", "num_heads": ">= 1",
              "hidden_dim": ">= 1", "intermediate_dim": ">= 1", "sequence_length": ">= 1",
              "dropout": "[0, 1)", "layer_norm_epsilon": "> 0", "num_decoder_layers": ">= 1",
              "decoder_sequence_length": ">= 1", "key_value_dim": ">= 1",
              "relative_attention_num_buckets": ">= 4", "relative_attention_max_distance": ">= 2"}

    def __init__(self, vocabulary_size: int, num_layers: int = 2,
                 num_decoder_layers: Optional[int] = None, num_heads: int = 2,
                 hidden_dim: int = 128, key_value_dim: Optional[int] = None,
                 intermediate_dim: int = 512, sequence_length: int = 512,
                 decoder_sequence_length: Optional[int] = None, dropout: float = 0.1,
                 activation: str = "relu", gated: bool = False,
                 layer_norm_epsilon: float = 1e-6, relative_attention_num_buckets: int = 32,
                 relative_attention_max_distance: int = 128, tie_embeddings: bool = True,
                 dtype=None, **kwargs):
        check_limits(self.limits, locals(), "backbone")
        num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
        key_value_dim = key_value_dim or hidden_dim // num_heads
        decoder_sequence_length = decoder_sequence_length or sequence_length
        stack = dict(num_heads=num_heads, key_value_dim=key_value_dim, hidden_dim=hidden_dim,
                     intermediate_dim=intermediate_dim, activation=activation, gated=gated,
                     dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                     num_buckets=relative_attention_num_buckets,
                     max_distance=relative_attention_max_distance, dtype=dtype)

        # === Layers ===
        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            vocabulary_size, hidden_dim, tie_weights=tie_embeddings,
            embeddings_initializer=kernel_initializer(), dtype=dtype, name="token_embedding")
        self.encoder = T5Stack(num_layers, decoder=False, name="encoder", **stack)
        self.decoder = T5Stack(num_decoder_layers, decoder=True, name="decoder", **stack)

        # === Functional Model ===
        names = ("encoder_token_ids", "encoder_padding_mask", "decoder_token_ids",
                 "decoder_padding_mask")
        inputs = {n: keras.Input(shape=(None,), dtype="int32", name=n) for n in names}
        encoded = self.encoder(self.token_embedding(inputs["encoder_token_ids"]),
                               padding_mask=inputs["encoder_padding_mask"])
        decoded = self.decoder(self.token_embedding(inputs["decoder_token_ids"]),
                               padding_mask=inputs["decoder_padding_mask"],
                               encoder_output=encoded,
                               encoder_padding_mask=inputs["encoder_padding_mask"])
        super().__init__(inputs=inputs, outputs={"encoder_sequence_output": encoded,
                                                 "decoder_sequence_output": decoded},
                         dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size, self.num_layers = vocabulary_size, num_layers
        self.num_decoder_layers, self.num_heads = num_decoder_layers, num_heads
        self.hidden_dim, self.key_value_dim = hidden_dim, key_value_dim
        self.intermediate_dim, self.sequence_length = intermediate_dim, sequence_length
        self.decoder_sequence_length, self.dropout = decoder_sequence_length, dropout
        self.activation, self.gated = activation, gated
        self.layer_norm_epsilon = layer_norm_epsilon
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.tie_embeddings = tie_embeddings

    def call_encoder(self, token_ids, padding_mask, training=None):
        """Source ids and padding mask -> encoder hidden states."""
        return self.encoder(self.token_embedding(token_ids), padding_mask=padding_mask,
                            training=training)

    def call_decoder(self, token_ids, encoder_output, encoder_padding_mask, *,
                     decoder_padding_mask=None, self_attention_cache=None,
                     self_attention_cache_update_index=None, cross_attention_cache=None,
                     cross_attention_cache_update_index=None, training=None):
        """Target ids -> decoder hidden states; caches as ``EncoderDecoder.call_decoder``
        (``[batch, num_decoder_layers, 2, length, num_heads, key_value_dim]``)."""
        return self.decoder(
            self.token_embedding(token_ids), padding_mask=decoder_padding_mask,
            encoder_output=encoder_output, encoder_padding_mask=encoder_padding_mask,
            self_attention_cache=self_attention_cache,
            self_attention_cache_update_index=self_attention_cache_update_index,
            cross_attention_cache=cross_attention_cache,
            cross_attention_cache_update_index=cross_attention_cache_update_index,
            training=training)

    def logits(self, hidden):
        """Vocabulary logits of decoder hidden states: the tied embedding on hidden states
        scaled by ``hidden_dim ** -0.5`` (T5 v1.0), or the separate LM head (v1.1)."""
        if self.tie_embeddings:
            hidden = hidden * (self.hidden_dim ** -0.5)
        return self.token_embedding(hidden, reverse=True)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers, "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim, "key_value_dim": self.key_value_dim,
            "intermediate_dim": self.intermediate_dim, "sequence_length": self.sequence_length,
            "decoder_sequence_length": self.decoder_sequence_length, "dropout": self.dropout,
            "activation": self.activation, "gated": self.gated,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "tie_embeddings": self.tie_embeddings})
        return config
