"""The ``seq2seq`` head: text to text (translation, summarization) on an encoder-decoder."""
from typing import Optional

from kplm.checks import check_limits
from kplm.components import Head
from kplm.errors import ConfigError, DataError
from kplm.hookspecs import hookimpl


class Seq2SeqHead(Head):
    """Generates a target text from a source text with a ``kplm.models.seq2seq_lm.Seq2SeqLM``
    on an ``encoder_decoder`` backbone.

    Training is teacher forcing: the encoder reads ``[CLS] source [SEP]``, the decoder reads
    ``[CLS] target`` and predicts ``target [SEP]`` (the tokenizer's ``cls`` role starts and its
    ``sep`` role ends a target), the loss averaged over real target tokens. Evaluation generates
    greedily (``num_beams: 1``) or with beam search and scores corpus **BLEU**
    (``keras_hub.metrics.Bleu``, 13a tokenization, 4-grams) and **ROUGE-1/2/L** F1
    (``keras_hub.metrics.RougeN`` / ``RougeL``, the ``rouge-score`` package). Text is compared
    as the tokenizer normalizes it: each reference goes through the same tokenize-detokenize
    round trip as generated text (an uncased tokenizer lowercases both sides). The baseline
    copies the source as the prediction.

    Args:
        source_field: str. Example field with the source text. Defaults to ``"source"``.
        target_field: str. Example field with the target text. Defaults to ``"target"``.
        target_sequence_length: int or None. Decoder length in tokens (``[CLS]`` + target);
            None: the backbone's ``decoder_sequence_length``. Defaults to None.
        num_beams: int. 1 generates greedily; more uses beam search with that many beams.
            Defaults to 1.
        shuffle_buffer: int. Examples held for shuffling. Defaults to 10000.

    Example:
    >>> head = Seq2SeqHead(num_beams=4)
    >>> scores = head.score(["a dog runs ."], ["a dog runs ."])
    >>> {k: round(v, 3) for k, v in scores.items()}
    {'bleu': 1.0, 'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}
    """

    metric = "bleu"
    metric_mode = "max"
    model_module = "kplm.models.seq2seq_lm"
    #: The backbone families it fine-tunes (a config pairing it with another is refused).
    families = ("encoder_decoder",)
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"target_sequence_length": ">= 2", "num_beams": ">= 1", "shuffle_buffer": ">= 0"}
    pair_field = None
    #: Batches are cut per stream: sources to the longest source, targets (decoder inputs,
    #: labels, weights) to the longest target (``kplm.data.bucketing``).
    length_bucketing = True
    bucket_labels_follow = "decoder_"

    def __init__(self, source_field: str = "source", target_field: str = "target",
                 target_sequence_length: Optional[int] = None, num_beams: int = 1,
                 shuffle_buffer: int = 10000):
        check_limits(self.limits, locals(), "head")
        self.source_field, self.target_field = source_field, target_field
        self.target_sequence_length = target_sequence_length
        self.num_beams, self.shuffle_buffer = num_beams, shuffle_buffer
        self._decoder_limit = None  # the backbone's decoder_sequence_length, once known
        self._tokenizer = None  # the last evaluation's tokenizer (normalizes the baseline)

    @property
    def text_field(self):
        """The input field ``kplm predict`` fills (the source)."""
        return self.source_field

    def get_config(self):
        return {"source_field": self.source_field, "target_field": self.target_field,
                "target_sequence_length": self.target_sequence_length,
                "num_beams": self.num_beams, "shuffle_buffer": self.shuffle_buffer}

    def prepare(self, source):
        """The data must have the source and target fields (checked on the first example)."""
        for example in source.build().take(1).as_numpy_iterator():
            for key in ("source_field", "target_field"):
                if getattr(self, key) not in example:
                    raise DataError(f"the data has no field '{getattr(self, key)}' (fields: "
                                    f"{', '.join(example)}); set head.{key}")

    def _target_length(self, sequence_length, backbone=None):
        limit = backbone.decoder_sequence_length if backbone is not None else self._decoder_limit
        length = self.target_sequence_length or limit or sequence_length
        if limit is not None and length > limit:
            raise ConfigError(f"head.target_sequence_length ({length}) exceeds the backbone's "
                              f"decoder_sequence_length ({limit})")
        return length

    def tokens_per_row(self, sequence_length):
        """Source plus target positions of one example (for tokens/s)."""
        return sequence_length + self._target_length(sequence_length)

    # --- data -------------------------------------------------------------------------------
    def _encoders(self, tokenizer, sequence_length, target_length):
        """``(sources -> encoder inputs, targets -> (decoder inputs, labels, weights))``."""
        import keras_hub
        import tensorflow as tf

        layer = tokenizer.build()
        cls_id, sep_id, pad_id = (tokenizer.special_id(r) for r in ("cls", "sep", "pad"))
        source_packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length, start_value=cls_id, end_value=sep_id,
            pad_value=pad_id, return_padding_mask=True)
        # One longer than the decoder: inputs are [:-1], labels the same row shifted, [1:].
        target_packer = keras_hub.layers.StartEndPacker(
            sequence_length=target_length + 1, start_value=cls_id, end_value=sep_id,
            pad_value=pad_id, return_padding_mask=True)

        def sources(texts):
            ids, mask = source_packer(layer(texts))
            return {"encoder_token_ids": ids, "encoder_padding_mask": tf.cast(mask, tf.int32)}

        def targets(texts):
            ids, mask = target_packer(layer(texts))
            mask = tf.cast(mask, tf.int32)
            return ({"decoder_token_ids": ids[:, :-1], "decoder_padding_mask": mask[:, :-1]},
                    ids[:, 1:], tf.cast(mask[:, 1:], tf.float32))
        return sources, targets

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True, with_labels=True):
        """``(x, y, sample_weight)`` teacher-forcing batches (``x``: encoder inputs only when
        ``with_labels`` is False)."""
        import tensorflow as tf

        sources, targets = self._encoders(tokenizer, sequence_length,
                                          self._target_length(sequence_length))

        def encode(batch):
            x = sources(batch[self.source_field])
            if not with_labels:
                return x
            decoder, labels, weights = targets(batch[self.target_field])
            return {**x, **decoder}, labels, weights

        ds = source_ds
        if training:
            ds = ds.shuffle(self.shuffle_buffer, seed=seed).repeat()
        ds = ds.batch(batch_size, drop_remainder=training)
        return ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # --- model ------------------------------------------------------------------------------
    def build_model(self, backbone):
        """A ``Seq2SeqLM`` over an ``encoder_decoder`` backbone (compiles itself)."""
        if getattr(backbone, "family", None) != "encoder_decoder":
            raise ConfigError(f"head 'seq2seq' needs an encoder_decoder backbone, got "
                              f"{type(backbone).__name__} (family "
                              f"{getattr(backbone, 'family', 'encoder')!r})")
        self._target_length(backbone.sequence_length, backbone)
        vocabulary = getattr(backbone, "vocabulary_size", None)
        if vocabulary and self.num_beams > vocabulary:  # more beams than tokens: only memory
            raise ConfigError(f"config key 'head.num_beams' ({self.num_beams:,}) must be at most "
                              f"the vocabulary size ({vocabulary:,})")
        self._decoder_limit = backbone.decoder_sequence_length
        from kplm.models.seq2seq_lm import Seq2SeqLM
        return Seq2SeqLM(backbone)

    # --- generation and metrics -------------------------------------------------------------
    def generate(self, model, texts, tokenizer, *, sequence_length, pad_to=None):
        """Generate the target text of each source string in ``texts`` (one batch; padded to
        ``pad_to`` rows so that a short last batch reuses the traced generation function)."""
        import keras_hub
        import tensorflow as tf

        count = len(texts)
        if pad_to and count < pad_to:
            texts = list(texts) + [texts[-1]] * (pad_to - count)

        target_length = self._target_length(sequence_length, model.backbone)
        sources, _ = self._encoders(tokenizer, sequence_length, target_length)
        sampler = (keras_hub.samplers.BeamSampler(num_beams=self.num_beams)
                   if self.num_beams > 1 else keras_hub.samplers.GreedySampler())
        if type(model.sampler) is not type(sampler) or getattr(
                model.sampler, "num_beams", 1) != self.num_beams:
            model.sampler, model.generate_function = sampler, None
        x = sources(tf.constant(texts))
        ids = model.generate_ids(x["encoder_token_ids"], x["encoder_padding_mask"],
                                 start_token_id=tokenizer.special_id("cls"),
                                 end_token_id=tokenizer.special_id("sep"),
                                 pad_token_id=tokenizer.special_id("pad"),
                                 max_length=target_length)
        sep_id, specials = tokenizer.special_id("sep"), set(tokenizer.special_token_ids)
        rows = []
        for row in ids[:, 1:].tolist():  # drop the start token, cut at the first end token
            row = row[:row.index(sep_id)] if sep_id in row else row
            rows.append([t for t in row if t not in specials])
        return self._detokenize(tokenizer, rows[:count])

    # --- serving ----------------------------------------------------------------------------
    def serving_endpoints(self, model, tokenizer, sequence_length):
        """``kplm export``: raw source strings in, generated strings out, all in graph (the
        tokenizer, the encoder once, the decoder a token at a time with its self- and
        cross-attention caches, the sampler's loop, the detokenizer). Signatures:
        ``serving_default`` decodes as the head does (``num_beams``), ``greedy`` greedily,
        ``beam`` with beam search (``num_beams`` beams, 4 when the head decodes greedily).
        Each returns ``generated``, a ``[batch]`` string tensor equal to ``kplm predict``'s."""
        import keras_hub

        from kplm.serving import string_input
        beams = self.num_beams if self.num_beams > 1 else 4
        samplers = {"greedy": lambda: keras_hub.samplers.GreedySampler(),
                    "beam": lambda: keras_hub.samplers.BeamSampler(num_beams=beams)}
        samplers["serving_default"] = samplers["beam" if self.num_beams > 1 else "greedy"]
        signature = [string_input(self.source_field)]
        return {name: (self._serve(model, tokenizer, sequence_length, make()), signature)
                for name, make in samplers.items()}

    def _serve(self, model, tokenizer, sequence_length, sampler):
        import tensorflow as tf
        target_length = self._target_length(sequence_length, model.backbone)
        sources, _ = self._encoders(tokenizer, sequence_length, target_length)
        cls_id, sep_id, pad_id = (tokenizer.special_id(r) for r in ("cls", "sep", "pad"))
        specials = tf.constant(sorted(tokenizer.special_token_ids), tf.int32)
        layer = tokenizer.build()

        def serve(texts):
            x = sources(texts)
            batch = tf.shape(x["encoder_token_ids"])[0]
            prompt = tf.concat([tf.fill([batch, 1], cls_id),
                                tf.fill([batch, target_length - 1], pad_id)], axis=1)
            mask = tf.concat([tf.ones([batch, 1], tf.bool),
                              tf.zeros([batch, target_length - 1], tf.bool)], axis=1)
            model.sampler, model.use_cache = sampler, True  # read while this traces
            out = model.generate_step({**x, "decoder_token_ids": tf.cast(prompt, tf.int32),
                                       "decoder_padding_mask": mask}, stop_token_ids=[sep_id])
            ids = tf.cast(out["decoder_token_ids"][:, 1:], tf.int32)  # after the start token
            keep = tf.cast(out["decoder_padding_mask"][:, 1:], tf.bool)  # to the end token
            keep &= tf.reduce_all(ids[:, :, None] != specials[None, None, :], axis=-1)
            text = layer.detokenize(tf.ragged.boolean_mask(ids, keep))
            return {"generated": tf.reshape(text, [-1])}
        return serve

    @staticmethod
    def _detokenize(tokenizer, rows):
        import tensorflow as tf
        if not rows:
            return []
        texts = tokenizer.build().detokenize(tf.ragged.constant(rows, dtype=tf.int32,
                                                                row_splits_dtype=tf.int64))
        texts = texts.numpy().tolist() if hasattr(texts, "numpy") else list(texts)
        return [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]

    def normalize(self, tokenizer, texts):
        """Texts as the tokenizer sees them (tokenized, then detokenized)."""
        layer = tokenizer.build()
        return self._detokenize(tokenizer, [list(r) for r in layer(list(texts))]) if texts else []

    @staticmethod
    def score(references, hypotheses):
        """Corpus BLEU and mean ROUGE-1/2/L F1 of ``hypotheses`` against ``references``."""
        import keras_hub
        bleu = keras_hub.metrics.Bleu()
        bleu.update_state([[r] for r in references], list(hypotheses))
        scores = {"bleu": float(bleu.result())}
        for name, metric in (("rouge1", keras_hub.metrics.RougeN(order=1)),
                             ("rouge2", keras_hub.metrics.RougeN(order=2)),
                             ("rougeL", keras_hub.metrics.RougeL())):
            metric.update_state(list(references), list(hypotheses))
            scores[name] = float(metric.result()["f1_score"])
        return scores

    def _pairs(self, source, batch_size):
        for batch in source.build().batch(batch_size).as_numpy_iterator():
            yield ([s.decode("utf-8") for s in batch[self.source_field]],
                   [t.decode("utf-8") for t in batch[self.target_field]])

    def evaluate(self, model, source, tokenizer, *, batch_size, sequence_length):
        """BLEU and ROUGE-1/2/L F1 of generated targets over all of ``source``."""
        self._tokenizer = tokenizer
        references, hypotheses = [], []
        for sources, targets in self._pairs(source, batch_size):
            hypotheses += self.generate(model, sources, tokenizer,
                                        sequence_length=sequence_length, pad_to=batch_size)
            references += self.normalize(tokenizer, targets)
        return self.score(references, hypotheses)

    def predict(self, model, examples, tokenizer, *, batch_size, sequence_length):
        """``[{"source": ...}]`` -> ``[{"generated": text}]``."""
        texts = [ex[self.source_field] for ex in examples]
        generated = []
        pad_to = batch_size if len(texts) > batch_size else None
        for start in range(0, len(texts), batch_size):
            generated += self.generate(model, texts[start:start + batch_size], tokenizer,
                                       sequence_length=sequence_length, pad_to=pad_to)
        return [{"generated": g} for g in generated]

    def baseline(self, train_source, eval_source):
        """The scores of copying the source as the prediction (normalized by the tokenizer of
        the last ``evaluate``; lowercased when there was none)."""
        references, hypotheses = [], []
        for sources, targets in self._pairs(eval_source, 256):
            if self._tokenizer is not None:
                sources, targets = (self.normalize(self._tokenizer, t) for t in (sources, targets))
            else:
                sources, targets = [s.lower() for s in sources], [t.lower() for t in targets]
            hypotheses += sources
            references += targets
        return {"copy_source": self.score(references, hypotheses)}

    def validation_callback(self, model, source, tokenizer, *, batch_size, sequence_length):
        """A Keras callback that adds ``val_bleu``, ``val_rouge1``, ... to the epoch logs (for
        checkpointing and early stopping on BLEU); run it before those callbacks."""
        import keras
        head = self

        class GenerationMetrics(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                scores = head.evaluate(model, source, tokenizer, batch_size=batch_size,
                                       sequence_length=sequence_length)
                if logs is not None:
                    logs.update({f"val_{k}": v for k, v in scores.items()})
        return GenerationMetrics()


@hookimpl
def register_heads(register):
    register("seq2seq", Seq2SeqHead)
