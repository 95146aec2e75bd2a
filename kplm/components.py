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
    """

    text_field = "text"

    def check(self):
        """Validate inputs (files exist, readable, non-empty) without reading everything."""

    def build(self):  # pragma: no cover - abstract
        raise NotImplementedError

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
    - ``tokens_per_row(sequence_length)``: tokens one row trains on (for tokens/s).
    - Optionally the combinable protocol (``output_name``, ``batches``, ``transform``,
      ``model_inputs``, ``head``, ``loss``, ``metrics``), so that it can be listed with others
      in ``objectives:``; see ``kplm.objectives.combined.CombinedObjective``.
    """

    families = ("encoder",)
    output_name = None

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
      ``kplm.serving``.
    """

    metric = "loss"
    metric_mode = "min"
    #: Module whose import registers the task model's Keras class, so saved runs reload.
    model_module = None

    def prepare(self, source):
        """Learn what the data fixes (label sets, ...). Default: nothing."""

    def baseline(self, train_source, eval_source):
        """A trivial baseline's metrics on ``eval_source`` (e.g. majority class), or None."""
        return None
