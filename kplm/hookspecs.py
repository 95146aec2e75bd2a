"""Hook specifications: the only ways a plugin (built-in or third-party) extends kplm.

Each hook receives a ``register(name, component)`` callable. ``component`` is a class, or a
``"module:attribute"`` string that is imported only when the component is first used (keeps
TensorFlow out of ``kplm --help`` and ``kplm plugins``). Hooks gain arguments over time; they never
lose or rename one.
"""
import pluggy

hookspec = pluggy.HookspecMarker("kplm")
hookimpl = pluggy.HookimplMarker("kplm")


@hookspec
def register_objectives(register):
    """Register pretraining objectives (subclasses of ``kplm.Objective``), e.g. ``masked_lm``."""


@hookspec
def register_heads(register):
    """Register fine-tuning heads (subclasses of ``kplm.Head``), e.g. ``sequence_classification``."""


@hookspec
def register_data_sources(register):
    """Register data sources (subclasses of ``kplm.DataSource``), e.g. ``text_files``."""


@hookspec
def register_backbones(register):
    """Register backbones (``keras.Model`` subclasses taking ``vocabulary_size``), e.g. ``encoder``."""


@hookspec
def register_tokenizers(register):
    """Register tokenizer kinds (subclasses of ``kplm.Tokenizer``), e.g. ``wordpiece``."""


@hookspec
def register_callbacks(register):
    """Register Keras callbacks usable from a config's ``callbacks:`` list."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``kplm`` command-line group ``cli``."""
