"""The causal-LM task model: a decoder backbone plus its tied output projection, with
``keras_hub``'s ``generate()`` (greedy, top-k, top-p and beam samplers) on a key/value cache."""
import keras
import keras_hub
from keras import ops


@keras.saving.register_keras_serializable(package="kplm")
class CausalLM(keras_hub.models.CausalLM):
    """Predicts every next token: logits ``[batch, length, vocabulary_size]`` through the
    transposed token embedding (weights tied; float32 under mixed precision).

    Compiles itself with a cross-entropy averaged over the tokens whose sample weight is 1 (padding
    and other weight-0 targets do not dilute it), weighted accuracy and perplexity. As a
    ``keras_hub.models.CausalLM`` it generates with ``generate()`` and any ``keras_hub.samplers``
    sampler, reusing a per-layer key/value cache (``call_with_cache``); with ``use_cache=False``
    every step recomputes the whole prefix instead (same tokens, for comparison). See
    ``kplm.generation`` for strings in, strings out.

    Args:
        backbone: a kplm ``Decoder`` (anything with ``token_embedding``, ``call_with_cache``,
            ``build_cache`` and a ``sequence_output``).
        use_cache: bool. Generate with the key/value cache. Defaults to True.

    Example:
    >>> import numpy as np
    >>> from kplm.models.decoder import Decoder
    >>> from kplm.models.causal_lm import CausalLM
    >>> model = CausalLM(Decoder(vocabulary_size=50, num_layers=1, hidden_dim=16, num_heads=2,
    ...                          intermediate_dim=32, sequence_length=8))
    >>> model.compile(sampler="greedy")  # then model.generate(...), see kplm.generation
    >>> logits = model({"token_ids": np.ones((2, 5), "int32"),
    ...                 "padding_mask": np.ones((2, 5), "int32")})
    >>> tuple(logits.shape), str(logits.dtype)
    ((2, 5, 50), "<dtype: 'float32'>")
    """

    #: Compile cached generation with XLA: None follows ``jit_compile`` (Keras turns it on for
    #: accelerators). True on a CPU makes cached generation 2-8x faster (beam search most) for a
    #: few seconds more compiling; random samplers then draw other numbers than without XLA.
    generate_jit_compile = None

    def __init__(self, backbone, preprocessor=None, use_cache=True, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        # Logits in float32 even when the backbone computes in (b)float16.
        self.logits_dtype = keras.layers.Activation("linear", dtype="float32", name="logits")

        # === Functional Model ===
        inputs = backbone.input
        sequence = backbone(inputs)["sequence_output"]
        logits = self.logits_dtype(backbone.token_embedding(sequence, reverse=True))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

        # === Config ===
        self.use_cache = use_cache

    def get_config(self):
        config = super().get_config()
        config["use_cache"] = self.use_cache
        return config

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto",
                sampler="greedy", **kwargs):
        """Like ``keras_hub.models.CausalLM.compile``, with kplm's defaults: the loss divides by
        the sum of sample weights, metrics are accuracy and perplexity, sampling is greedy."""
        from kplm.models.token_loss import compile_defaults
        optimizer, loss, weighted_metrics = compile_defaults(optimizer, loss, weighted_metrics)
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                        sampler=sampler, **kwargs)
        self._generation_key = None  # kplm.generation's note of the sampler it set

    def set_sampler(self, sampler, use_cache=None):
        """Choose the generation ``sampler`` (a name or a ``keras_hub.samplers.Sampler``) and
        the cache mode without recompiling (the optimizer state is kept)."""
        self.sampler = keras_hub.samplers.get(sampler)
        if use_cache is not None:
            self.use_cache = use_cache
        self.generate_function = None
        self._generation_key = None

    # --- generation -------------------------------------------------------------------------
    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Logits, hidden states and updated cache for ``token_ids`` at positions starting at
        ``cache_update_index`` (see ``Decoder.call_with_cache``)."""
        hidden, cache = self.backbone.call_with_cache(token_ids, cache, cache_update_index)
        logits = ops.cast(self.backbone.token_embedding(hidden, reverse=True), "float32")
        return logits, hidden, cache

    def call_without_cache(self, token_ids, cache, index):
        """``call_with_cache``'s signature, ignoring the cache: runs the whole prefix
        ``token_ids[:, :index]`` through the backbone and returns the last position's logits
        and hidden state (what generation costs without a cache)."""
        prefix = ops.convert_to_tensor(token_ids)[:, :index]
        hidden = self.backbone({"token_ids": prefix, "padding_mask": ops.ones_like(prefix)},
                               training=False)["sequence_output"][:, -1, :][:, None, :]
        logits = ops.cast(self.backbone.token_embedding(hidden, reverse=True), "float32")
        return logits, hidden, cache

    def _build_cache(self, token_ids):
        """Seed a key/value cache with one forward pass over ``token_ids``."""
        cache = self.backbone.build_cache(ops.shape(token_ids)[0], ops.shape(token_ids)[1])
        _, hidden_states, cache = self.call_with_cache(token_ids, cache, 0)
        return hidden_states, cache

    def make_generate_function(self):
        if self.generate_function is None and not self.run_eagerly \
                and keras.config.backend() == "tensorflow":
            import tensorflow as tf
            # The uncached prefix grows every step: dynamic shapes, which XLA cannot compile.
            jit = self.generate_jit_compile
            jit = bool(self.use_cache and (self.jit_compile if jit is None else jit))
            self.generate_function = tf.function(self.generate_step, jit_compile=jit)
        return super().make_generate_function()

    def generate_step(self, inputs, stop_token_ids=None):
        """One batch of generation (``keras_hub``'s GPT-2 recipe): fill every position after
        the prompt, one token per step, until ``stop_token_ids`` or the end of the row."""
        from kplm.generation import any_equal

        token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
        # The first position no row has a prompt token at.
        index = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1))
        if self.use_cache:
            hidden_states, cache = self._build_cache(token_ids)

            def next(prompt, cache, index):
                step = ops.slice(prompt, [0, index - 1], [ops.shape(prompt)[0], 1])
                logits, hidden, cache = self.call_with_cache(step, cache, index - 1)
                return ops.squeeze(logits, axis=1), ops.squeeze(hidden, axis=1), cache
        else:
            hidden_states, cache = None, None

            def next(prompt, cache, index):
                logits, hidden, cache = self.call_without_cache(prompt, cache, index)
                return ops.squeeze(logits, axis=1), ops.squeeze(hidden, axis=1), cache

        token_ids = self.sampler(next=next, prompt=token_ids, cache=cache, index=index,
                                 mask=padding_mask, stop_token_ids=stop_token_ids,
                                 hidden_states=hidden_states, model=self)
        if stop_token_ids is None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        else:
            # Keep everything up to and including each row's first new stop token.
            ends = ops.cast(any_equal(token_ids, stop_token_ids,
                                      ops.logical_not(ops.cast(padding_mask, "bool"))), "int32")
            after = ops.cumsum(ends, axis=-1) - ends
            padding_mask = ops.logical_not(ops.cast(after, "bool"))
        return {"token_ids": token_ids, "padding_mask": padding_mask}
