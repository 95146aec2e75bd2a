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
    """A trainable, savable tokenizer kind. ``build()`` returns an in-graph keras_hub tokenizer."""


class Objective(Component):
    """A pretraining objective: turns raw text into (x, y, sample_weight) and builds the model.

    Subclasses implement ``dataset(source_ds, tokenizer, batch_size, sequence_length, seed)`` and
    ``build_model(backbone, tokenizer)``; the returned model compiles itself with its own loss and
    metrics (``model.compile(optimizer=...)``).
    """


class Head(Component):
    """A fine-tuning head (same contract as an objective, plus ``postprocess``)."""
