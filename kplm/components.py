"""Base classes of the pluggable components. Plain Python: importing this module imports no
TensorFlow, so plugins can subclass these at their top level and stay fast to list."""


class Component:
    """Common base: a component is built from keyword arguments that mirror a config section.

    Subclasses annotate their ``__init__`` arguments (``int``, ``float``, ``bool``, ``str``,
    ``list[str]``, ``Optional[...]``, ``Literal[...]``); ``kplm.config`` checks a config section
    against that signature before anything runs.
    """

    #: Registry name, filled in at registration.
    name = None

    def get_config(self):
        """The constructor arguments, as they would appear in a config section."""
        return dict(getattr(self, "_config", {}))


class DataSource(Component):
    """Produces a ``tf.data.Dataset`` of raw examples (dicts of scalar strings / numbers).

    Subclasses implement ``check()`` (cheap, raises ``kplm.errors.DataError`` naming the file) and
    ``build()`` returning the dataset. ``text_field`` names the string feature objectives read.

    Sources of token ids rather than text (``kplm data prepare``'s ``tfrecord``) also set:

    - ``tokenizer_dir``: the directory of the tokenizer the ids were made with, which ``kplm
      pretrain`` loads when the config gives no vocabulary. Default: None (a source of text).
    - ``check_tokenizer(tokenizer)``: refuse a tokenizer the ids were not made with; ``kplm
      pretrain`` calls it for every source. Default: accepts any.
    """

    text_field = "text"
    #: Directory of the tokenizer the examples' ids were made with; None for sources of text.
    tokenizer_dir = None

    def check(self):
        """Validate inputs (files exist, readable, non-empty) without reading everything."""

    def check_tokenizer(self, tokenizer):
        """Refuse ``tokenizer`` (a kplm ``Tokenizer``, or the directory one was saved in) with a
        ``kplm.errors.ConfigError`` unless the examples can be read with it (ids prepared with
        another tokenizer cannot). Default: nothing to check, text reads with any."""

    def build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def located(self):
        """Yield ``(place, example)`` for every example of ``build()``, the example as NumPy
        values (strings as bytes) and ``place`` where it is, for errors about one example:
        ``"FILE:LINE"`` where the source knows it, else ``"example N"`` (the default)."""
        for number, example in enumerate(self.build().as_numpy_iterator(), 1):
            yield f"example {number}", example

    def texts(self):
        """The dataset of scalar strings in ``text_field`` (what tokenizers learn from)."""
        field = self.text_field
        return self.build().map(lambda example: example[field])


class Tokenizer(Component):
    """A trainable, savable tokenizer kind. ``build()`` returns an in-graph keras_hub tokenizer.

    ``tokens`` is the vocabulary (id order). ``special`` maps the roles heads and objectives use
    (``cls``: sequence start, ``sep``: separator/end, ``pad``, ``unk``, ``mask``) to tokens;
    ``pair_separator`` is the roles between the two texts of a pair; ``continuation_prefix`` is
    the mark of word-internal pieces (``"##"`` for WordPiece; None when pieces do not mark it,
    which the word-aligned heads refuse).
    """

    special = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}
    pair_separator = ("sep",)
    continuation_prefix = "##"
    tokens = None

    def token_to_id(self, token):
        return self.tokens.index(token)

    def special_id(self, role):
        """The id of the special token playing ``role`` (``cls``, ``sep``, ``pad``, ``unk``,
        ``mask``)."""
        return self.token_to_id(self.special[role])

    @property
    def special_token_ids(self):
        """Ids of every special token (never masked or predicted)."""
        return sorted({self.token_to_id(t) for t in self.special.values()})

    def require_word_pieces(self, what):
        """Refuse tokenizers without ``##`` continuation pieces for word-aligned ``what``."""
        if self.continuation_prefix != "##":
            from kplm.errors import ConfigError
            raise ConfigError(f"{what} needs a WordPiece tokenizer (word pieces marked '##'); "
                              f"this backbone's tokenizer is '{self.name}'")


class PretrainedBackbone(Component):
    """A backbone read from a checkpoint directory together with its tokenizer (registered under
    the backbone kind, e.g. ``backbone: {name: hf, path: DIR}``).

    Subclasses implement ``load(dtype=None)`` returning ``(backbone, tokenizer)``: a Keras
    backbone with trained weights and the kplm ``Tokenizer`` it was trained with.
    """

    def check(self):
        """Cheap validation before a run starts (e.g. the directory's format); raises
        ``ConfigError``. Default: nothing."""

    def family(self):
        """The family of the backbone ``load`` will return (``"encoder"``, ``"decoder"`` or
        ``"encoder_decoder"``), known without loading it. Default: ``"encoder"``."""
        return "encoder"

    def load(self, dtype=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def row_length(self, backbone):
        """The length of the rows pretraining packs for the loaded ``backbone``. Default: the
        backbone's ``sequence_length``."""
        return backbone.sequence_length

    def initialize_heads(self, model):
        """After pretraining built its task model around the loaded backbone: copy the heads
        the checkpoint holds (a masked-LM head, say) into ``model``, so that continued
        pretraining does not restart them. Returns a one-line note for the log, or None.
        Default: nothing to copy."""
        return None


class Objective(Component):
    """A pretraining objective: turns raw text into (x, y, sample_weight) and builds the model.

    Contract used by ``kplm pretrain`` (see ``kplm.objectives.masked_lm`` for a complete
    example, and ``docs/plugin_tutorial.md``):

    - ``families``: the backbone families it trains (``"encoder"``, ``"decoder"``,
      ``"encoder_decoder"``); a config pairing it with another is refused.
    - ``build_model(backbone)``: a Keras model that compiles itself with its loss and metrics
      (``model.compile(optimizer=...)``); kplm saves ``backbone`` when the run ends.
    - ``dataset(source_ds, tokenizer, *, batch_size, sequence_length, seed, training)``:
      ``(x, y, sample_weight)`` batches; training streams repeat forever, validation streams
      are finite and deterministic.
    - ``tokens_per_row(sequence_length)``: tokens one row trains on (for tokens/s). Default:
      ``sequence_length``.
    - Optionally the combinable protocol (``output_name``, ``builds_rows``, ``batches``,
      ``transform``, ``model_inputs``, ``head``, ``loss``, ``metrics``), so that it can be
      listed with others in ``objectives:``; see ``kplm.objectives.combined.CombinedObjective``.
      ``combinable`` says whether it does: by default, when it names its output
      (``output_name`` set); a subclass inheriting the protocol opts out with
      ``output_name = None``.
    """

    families = ("encoder",)
    #: Combinable objectives: the key of the objective's output, targets and metrics.
    output_name = None
    #: Combinable objectives: True if the training rows must come from it (sentence pairs).
    builds_rows = False

    @property
    def combinable(self):
        """Whether it implements the combinable protocol and may be listed with others in
        ``objectives:``. Default: when it names its output (``output_name`` is not None)."""
        return self.output_name is not None

    def tokens_per_row(self, sequence_length):
        """Tokens one row trains on. Default: ``sequence_length``."""
        return sequence_length


class Head(Component):
    """A fine-tuning head: preprocessing, model, metrics and postprocessing of one task.

    Contract used by ``kplm finetune`` / ``evaluate`` / ``predict`` (see
    ``kplm.heads.sequence_classification`` for a complete example):

    - ``prepare(source)``: learn what the data fixes (e.g. the label set) in one streaming pass;
      raise ``DataError`` for bad records.
    - ``dataset(source_ds, tokenizer, *, batch_size, sequence_length, seed, training,
      with_labels)``: ``(x, y)`` batches for ``fit`` (``x`` only without labels).
    - ``build_model(backbone)``: a Keras model that compiles itself with its loss and metrics
      (``model.compile(optimizer=...)``).
    - ``metric`` / ``metric_mode``: the validation metric that picks the best weights.
    - ``evaluate(model, source, tokenizer, *, batch_size, sequence_length)``: the task's
      metrics over a whole data source, as a dict of floats.
    - ``predict(model, examples, tokenizer, *, batch_size, sequence_length)``: a prediction dict
      per example dict (e.g. ``{"text": ...}``).
    - ``get_config()``: everything needed to rebuild the head (saved as ``head.json``).
    - ``model_module``: the module defining the task model's serializable Keras class.
    - ``serving_endpoint(model, tokenizer, sequence_length)`` (optional, for ``kplm export``):
      ``(fn, input_signature)``, a function of ``[batch]`` raw-string tensors returning a dict of
      named output tensors, computed in graph ops (tokenization included); see
      ``kplm.serving``. A head with several (the seq2seq head: greedy and beam search) defines
      ``serving_endpoints(...)`` instead: ``{signature name: (fn, input_signature)}``, one of
      them ``serving_default``.
    - ``length_bucketing``: True when the head's batches may be cut to their bucket length
      (``kplm.data.bucketing``): ``x`` has a ``padding_mask`` (or one per stream, such as
      ``encoder_padding_mask`` and ``decoder_padding_mask``), and every tensor of a batch whose
      second dimension is its stream's padded length is per token, padding at its end.
      Default: False.
    - ``bucket_labels_follow``: the stream (mask prefix) that per-token labels and weights are
      aligned with: ``""`` (``padding_mask``, the default) or e.g. ``"decoder_"``.
    - ``tokens_per_row(sequence_length)``: tokens one example trains on (for tokens/s).
      Default: ``sequence_length``.
    - ``validation_callback(model, source, tokenizer, *, batch_size, sequence_length)``: a Keras
      callback adding validation metrics ``fit`` cannot compute (e.g. generation + BLEU) to the
      epoch logs, or None. Default: None.
    - ``distillation``: what a fine-tuning config's ``distillation:`` section distils for this
      head (``"classification"``, ``"regression"`` or ``"tokens"``: see
      ``kplm.models.distiller``), or None when it cannot be distilled (the default); with
      ``unlabelled``, the label string an unlabelled transfer row gets (one its label encoder
      reads as "no gold label": ``""`` -> -1, ``"nan"`` -> NaN).
    """

    metric = "loss"
    metric_mode = "min"
    #: Module whose import registers the task model's Keras class, so saved runs reload.
    model_module = None
    #: Batches may be cut to their bucket length (see the contract above).
    length_bucketing = False
    #: The stream per-token labels follow when cut (see the contract above).
    bucket_labels_follow = ""
    #: What ``distillation:`` distils for this head (see the contract above); None: refused.
    distillation = None

    def prepare(self, source):
        """Learn what the data fixes (label sets, ...). Default: nothing."""

    @staticmethod
    def checked_labels(labels):
        """``labels`` (``head.labels``: given in a config, or read back from a run's
        ``head.json``) as a list, refused (``ConfigError``) unless None or at least 2 distinct,
        non-empty strings."""
        from kplm.errors import ConfigError
        if labels is None:
            return None
        labels = list(labels)
        if len(labels) < 2:
            raise ConfigError(f"head.labels: at least 2 labels, got {len(labels)}")
        if any(not isinstance(label, str) or not label.strip() for label in labels):
            raise ConfigError("head.labels: every label must be a non-empty string")
        if len(set(labels)) != len(labels):
            raise ConfigError("head.labels: labels must be distinct")
        return labels

    def require_fields(self, example, *keys):
        """Refuse (``DataError``) an ``example`` lacking the field a ``head.KEY`` names, for
        each of ``keys`` (``"text_field"``, ``"label_field"``, ...) that is set."""
        from kplm.errors import DataError, listed
        for key in keys:
            field = getattr(self, key)
            if field is not None and field not in example:
                raise DataError(f"the data has no field '{field}' (fields: "
                                f"{listed(sorted(example), 120)}); set head.{key}")

    def tokens_per_row(self, sequence_length):
        """Tokens one example trains on (for tokens/s). Default: ``sequence_length``."""
        return sequence_length

    def validation_callback(self, model, source, tokenizer, *, batch_size, sequence_length):
        """A Keras callback that adds ``val_<metric>`` entries ``fit`` cannot compute
        (generation, BLEU) to the epoch logs; ``kplm finetune`` runs it on the validation
        ``source`` before the callbacks that read those logs (checkpointing, early stopping).
        Default: None (``fit``'s own validation metrics suffice)."""
        return None

    def baseline(self, train_source, eval_source):
        """A trivial baseline's metrics on ``eval_source`` (e.g. majority class), or None."""
        return None

    def traced(self, name, tokenizer, sequence_length, build, **function_options):
        """``tf.function(build())`` kept on the head under ``name`` for this tokenizer and
        length, so that repeated ``predict`` calls reuse one traced graph (tokenizing and
        packing traced anew each call cost more than the model itself with small models).
        ``function_options`` go to ``tf.function`` (``input_signature``,
        ``reduce_retracing``)."""
        import tensorflow as tf
        cache = self.__dict__.setdefault("_traced_functions", {})
        key = (name, id(tokenizer), sequence_length)
        if key not in cache or cache[key][0] is not tokenizer:
            cache[key] = (tokenizer, tf.function(build(), **function_options))
        return cache[key][1]
