"""The ONE place kplm imports private modules (``keras.src``, ``keras_hub.src``,
``tensorflow.python``) from: each entry is a function for something the libraries' public APIs
do not offer, with a comment naming the missing public API and the versions its private path was
verified with. Everywhere else, kplm uses public APIs only.

On a version outside the verified series an entry still tries its private path, with a
``KplmWarning`` once; when that path is gone it raises ``PrivateAPIError`` naming the entry,
the installed version and the verified one, instead of an ``ImportError`` from deep inside.

Importing this module imports no TensorFlow or Keras; each entry imports what it needs.

Example:
    >>> is_verified("3.15.1", VERIFIED["keras"])
    True
    >>> is_verified("3.16.0", VERIFIED["keras"])
    False
"""
import functools
import warnings

from kplm.errors import KplmError, KplmWarning

# The release series (major.minor) the private paths below were checked against.
VERIFIED = {"keras": ("3.15",), "tensorflow": ("2.21",)}


class PrivateAPIError(KplmError):
    """A private API a ``kplm._compat`` entry relies on is missing from the installed library."""


def is_verified(version, series):
    """Whether ``version`` (``"3.15.1"``) belongs to one of the ``series`` (``("3.15",)``)."""
    return any(version == s or version.startswith(s + ".") for s in series)


@functools.lru_cache(maxsize=None)
def _warn_unverified(package, version, entry):
    warnings.warn(f"kplm._compat.{entry} uses a private {package} API verified with "
                  f"{package} {', '.join(VERIFIED[package])}.x, not {version}",
                  KplmWarning, stacklevel=3)


def _check(package, version, entry):
    if not is_verified(version, VERIFIED[package]):
        _warn_unverified(package, version, entry)


def _missing(package, version, entry, what):
    return PrivateAPIError(
        f"kplm._compat.{entry} needs {what}, which {package} {version} lacks (verified with "
        f"{package} {', '.join(VERIFIED[package])}.x): install that version or update "
        "kplm/_compat.py")


def global_seed_generator_state():
    """The state variable's value (the backend variable, as ``tf.train.Checkpoint`` tracks it) of
    the Keras global ``SeedGenerator`` that unseeded random ops draw from, or None while no
    unseeded random op has created it.

    Example:
    >>> state = global_seed_generator_state()
    >>> state is None or tuple(state.shape) == (2,)
    True
    """
    # Missing public API: Keras exports no accessor for the global SeedGenerator
    # (keras.src.random.seed_generator.global_seed_generator() creates it when absent, so it is
    # read from keras.src.backend.common.global_state instead, which does not).
    import keras

    entry = "global_seed_generator_state"
    _check("keras", keras.__version__, entry)
    try:
        from keras.src.backend.common import global_state
        generator = global_state.get_global_attribute("global_seed_generator")
        return None if generator is None else generator.state.value
    except (ImportError, AttributeError) as error:
        raise _missing("keras", keras.__version__, entry,
                       "keras.src.backend.common.global_state and a global SeedGenerator with "
                       "a .state variable") from error


def iterator_is_saveable(dataset):
    """Whether an iterator over ``dataset`` can be checkpointed: False when the pipeline holds
    state outside the graph (``from_generator``'s Python function, which TensorFlow refuses to
    save only once the iterator has started, far into a run).

    Missing public API: ``tf.data`` has no way to ask this; ``Dataset._as_serialized_graph``
    with ``ExternalStatePolicy.FAIL`` is what saving the iterator runs.

    Example:
    >>> import tensorflow as tf
    >>> iterator_is_saveable(tf.data.Dataset.range(3))
    True
    >>> iterator_is_saveable(tf.data.Dataset.from_generator(
    ...     lambda: iter([1]), output_signature=tf.TensorSpec((), tf.int64)))
    False
    """
    import tensorflow as tf
    _check("tensorflow", tf.__version__, "iterator_is_saveable")
    serialize = getattr(dataset, "_as_serialized_graph", None)
    if serialize is None:
        raise _missing("tensorflow", tf.__version__, "iterator_is_saveable",
                       "tf.data.Dataset._as_serialized_graph")
    try:
        serialize(external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL)
        return True
    except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError):
        return False


def sublayers(layer):
    """Every layer nested in ``layer`` (not itself), depth first, each once.

    Missing public API: Keras 3 lists only a ``Model``'s direct layers (``model.layers``); a
    layer's own sublayers (keras_hub's ``TransformerEncoder`` -> its attention -> the query
    projection) are reachable only through ``Layer._flatten_layers``, which keras_hub's own
    ``Backbone.enable_lora`` walks. kplm needs the LoRA-enabled projections it makes (to set
    their ``lora_alpha``, which ``enable_lora`` does not take). Verified with keras 3.15.
    """
    import keras
    _check("keras", keras.__version__, "sublayers")
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        raise _missing("keras", keras.__version__, "sublayers", "Layer._flatten_layers")
    return list(flatten(include_self=False))
