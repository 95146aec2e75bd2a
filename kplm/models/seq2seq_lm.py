"""The sequence-to-sequence task model: an encoder-decoder backbone plus its tied LM head,
with cached (and uncached) generation through ``keras_hub.samplers``."""
import keras
import keras_hub
from keras import ops

import kplm.models.encoder_decoder  # noqa: F401  (its backbones deserialize with saved models)
import kplm.models.t5  # noqa: F401
from kplm.generation import any_equal


@keras.saving.register_keras_serializable(package="kplm")
class Seq2SeqLM(keras_hub.models.Seq2SeqLM):
    """Predicts each next target token from the source and the target prefix (teacher forcing
    in ``fit``) and generates targets token by token with any ``keras_hub`` sampler (greedy,
    top-k, top-p, beam; set with ``compile(sampler=...)``).

    Inputs: the ``EncoderDecoder`` inputs (``encoder_token_ids``, ``encoder_padding_mask``,
    ``decoder_token_ids``, ``decoder_padding_mask``); output: logits ``[batch,
    decoder_length, vocabulary_size]`` through the tied reverse token embedding, in float32
    under mixed precision. Compiles itself with a cross-entropy averaged over real target
    tokens (``sample_weight`` marks them), token accuracy and perplexity.

    Generation (``generate`` / ``generate_ids``) encodes the source once and by default keeps a
    self-attention cache and a cross-attention cache (the encoder's keys/values, computed once)
    per decoder layer, so each step runs the decoder on one token; ``use_cache=False``
    recomputes the decoder over the whole prefix at every step (the reference the cached path
    is tested against). Every cache leaf is batch-first, so ``BeamSampler`` can repeat and
    reorder it.

    Args:
        backbone: a kplm ``EncoderDecoder`` (``call_encoder`` / ``call_decoder``).

    Example:
    >>> import numpy as np
    >>> from kplm.models.encoder_decoder import EncoderDecoder
    >>> from kplm.models.seq2seq_lm import Seq2SeqLM
    >>> model = Seq2SeqLM(EncoderDecoder(vocabulary_size=20, num_layers=1, hidden_dim=16,
    ...                                  num_heads=2, intermediate_dim=32, sequence_length=8))
    >>> ids = model.generate_ids(np.full((2, 8), 5, "int32"), np.ones((2, 8), "int32"),
    ...                          start_token_id=1, end_token_id=2, max_length=6)
    >>> ids.shape, ids[:, 0].tolist()
    ((2, 6), [1, 1])
    """

    def __init__(self, backbone, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        # Logits in float32 even under a mixed precision policy (a float16 softmax over a
        # vocabulary loses the small probabilities).
        self.logits_output = keras.layers.Activation("linear", dtype="float32", name="logits")

        # === Functional Model ===
        inputs = backbone.input
        hidden = backbone(inputs)["decoder_sequence_output"]
        outputs = self.logits_output(self._vocabulary_logits(backbone, hidden))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.use_cache = True

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto",
                sampler="greedy", **kwargs):
        """``keras.Model.compile`` with defaults: cross-entropy over real target tokens (the
        sample weights), token accuracy and perplexity; ``sampler`` is used by ``generate``.
        """
        from kplm.models.token_loss import compile_defaults
        optimizer, loss, weighted_metrics = compile_defaults(optimizer, loss, weighted_metrics)
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                        sampler=sampler, **kwargs)

    # --- generation -------------------------------------------------------------------------
    def call_decoder_with_cache(self, encoder_hidden_states, encoder_padding_mask,
                                decoder_token_ids, self_attention_cache=None,
                                self_attention_cache_update_index=None,
                                cross_attention_cache=None,
                                cross_attention_cache_update_index=None):
        """The decoder on ``decoder_token_ids`` starting at ``self_attention_cache_update_index``
        with both caches (``[batch, num_decoder_layers, 2, length, num_heads, head_dim]``);
        returns ``(logits, hidden_states, self_attention_cache, cross_attention_cache)``."""
        hidden, self_attention_cache, cross_attention_cache = self.backbone.call_decoder(
            decoder_token_ids, encoder_hidden_states, encoder_padding_mask,
            self_attention_cache=self_attention_cache,
            self_attention_cache_update_index=self_attention_cache_update_index,
            cross_attention_cache=cross_attention_cache,
            cross_attention_cache_update_index=cross_attention_cache_update_index)
        return self._logits(hidden), hidden, self_attention_cache, cross_attention_cache

    @staticmethod
    def _vocabulary_logits(backbone, hidden):
        """The backbone's own ``logits`` (T5: scaled or a separate head), else its tied token
        embedding reversed (BART)."""
        if hasattr(backbone, "logits"):
            return backbone.logits(hidden)
        return backbone.token_embedding(hidden, reverse=True)

    def _logits(self, hidden):
        return self.logits_output(self._vocabulary_logits(self.backbone, hidden))

    def _build_cache(self, encoder_token_ids, encoder_padding_mask, decoder_token_ids):
        """Encode the source, then seed both caches with one pass over the decoder prompt;
        returns ``(hidden_states, encoder_hidden_states, self_attention_cache,
        cross_attention_cache)``."""
        backbone = self.backbone
        encoder_hidden_states = backbone.call_encoder(encoder_token_ids, encoder_padding_mask)
        batch_size = ops.shape(encoder_token_ids)[0]
        head_dim = (getattr(backbone, "key_value_dim", None)  # T5's d_kv
                    or backbone.hidden_dim // backbone.num_heads)
        shape = [batch_size, backbone.num_decoder_layers, 2, ops.shape(decoder_token_ids)[1],
                 backbone.num_heads, head_dim]
        self_attention_cache = ops.zeros(shape, dtype=self.compute_dtype)
        shape[3] = ops.shape(encoder_token_ids)[1]
        cross_attention_cache = ops.zeros(shape, dtype=self.compute_dtype)
        _, hidden, self_attention_cache, cross_attention_cache = self.call_decoder_with_cache(
            encoder_hidden_states, encoder_padding_mask, decoder_token_ids,
            self_attention_cache, 0, cross_attention_cache, 0)
        return hidden, encoder_hidden_states, self_attention_cache, cross_attention_cache

    def generate_step(self, inputs, stop_token_ids=None):
        """One batch of generation (compiled by ``make_generate_function``): fills
        ``decoder_token_ids`` after the prompt (``decoder_padding_mask`` marks it) and returns
        them with a padding mask that ends at the first stop token."""
        encoder_token_ids = inputs["encoder_token_ids"]
        encoder_padding_mask = inputs["encoder_padding_mask"]
        decoder_token_ids = inputs["decoder_token_ids"]
        decoder_padding_mask = inputs["decoder_padding_mask"]
        # Start at the first position no row has a prompt token for.
        index = ops.min(ops.sum(ops.cast(decoder_padding_mask, "int32"), axis=-1))

        if self.use_cache:
            hidden, encoder_hidden, self_cache, cross_cache = self._build_cache(
                encoder_token_ids, encoder_padding_mask, decoder_token_ids)
            # The encoder tensors ride in the cache so that BeamSampler repeats them per beam.
            cache = (self_cache, encoder_hidden, encoder_padding_mask, cross_cache)

            def next(prompt, cache, index):
                self_cache, encoder_hidden, encoder_mask, cross_cache = cache
                position = index - 1  # the previous token's position, fed in this step
                token = ops.slice(prompt, [0, position], [ops.shape(prompt)[0], 1])
                logits, hidden, self_cache, _ = self.call_decoder_with_cache(
                    encoder_hidden, encoder_mask, token, self_cache, position, cross_cache, None)
                return (ops.squeeze(logits, axis=1), ops.squeeze(hidden, axis=1),
                        (self_cache, encoder_hidden, encoder_mask, cross_cache))
        else:
            encoder_hidden = self.backbone.call_encoder(encoder_token_ids, encoder_padding_mask)
            cache = (encoder_hidden, encoder_padding_mask)
            hidden = self.backbone.call_decoder(decoder_token_ids, encoder_hidden,
                                                encoder_padding_mask)

            def next(prompt, cache, index):
                encoder_hidden, encoder_mask = cache
                # The whole prefix again (causal: positions >= index do not affect index - 1).
                hidden = self.backbone.call_decoder(prompt, encoder_hidden, encoder_mask)
                hidden = ops.take(hidden, index - 1, axis=1)
                return self._logits(hidden), hidden, cache

        decoder_token_ids = self.sampler(
            next=next, prompt=decoder_token_ids, cache=cache, index=index,
            mask=decoder_padding_mask, stop_token_ids=stop_token_ids, hidden_states=hidden,
            model=self)

        if stop_token_ids is not None:
            # Keep everything up to and including the first stop token after the prompt.
            ends = ops.cast(any_equal(decoder_token_ids, stop_token_ids,
                                      ops.logical_not(ops.cast(decoder_padding_mask, "bool"))),
                            "int32")
            overflow = ops.cumsum(ends, axis=-1) - ends
            decoder_padding_mask = ops.logical_not(ops.cast(overflow, "bool"))
        else:
            decoder_padding_mask = ops.ones_like(decoder_token_ids, dtype="bool")
        return {"decoder_token_ids": decoder_token_ids,
                "decoder_padding_mask": decoder_padding_mask}

    def generate(self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False,
                 use_cache=True):
        """``keras_hub``'s ``generate``; ``use_cache=False`` recomputes the whole prefix each
        step."""
        if use_cache != self.use_cache:
            self.use_cache = use_cache
            self.generate_function = None  # retrace with the other step function
        return super().generate(inputs, max_length=max_length, stop_token_ids=stop_token_ids,
                                strip_prompt=strip_prompt)

    def generate_ids(self, encoder_token_ids, encoder_padding_mask, *, start_token_id,
                     end_token_id, pad_token_id=0, max_length=None, use_cache=True):
        """Token ids in, token ids out: generate from ``start_token_id`` until
        ``end_token_id`` (or ``max_length`` positions, default the backbone's
        ``decoder_sequence_length``). Returns ``[batch, max_length]`` int32 numpy ids whose
        first column is ``start_token_id``; positions after a row's end token are meaningless.
        """
        import numpy as np
        encoder_token_ids = np.asarray(encoder_token_ids, "int32")
        batch_size = encoder_token_ids.shape[0]
        length = max_length or self.backbone.decoder_sequence_length
        prompt = np.full((batch_size, length), pad_token_id, "int32")
        prompt[:, 0] = start_token_id
        mask = np.zeros((batch_size, length), bool)
        mask[:, 0] = True
        out = self.generate({"encoder_token_ids": encoder_token_ids,
                             "encoder_padding_mask": np.asarray(encoder_padding_mask, "int32"),
                             "decoder_token_ids": prompt, "decoder_padding_mask": mask},
                            stop_token_ids=[end_token_id], use_cache=use_cache)
        return np.asarray(out["decoder_token_ids"], "int32")
