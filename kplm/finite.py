"""No non-finite model is ever written: the check every writer calls before touching the disk.

A NaN or infinity in one weight spreads to every output after a step or two, so a file holding
one is worthless and, worse, looks like a model. Checkpoints, ``backbone.weights.h5``, a
fine-tuned model, a SavedModel export, a keras-hub preset and a Hugging Face directory all call
``require_finite`` first; it reads each variable once (cheap next to writing it).

Example:
>>> import keras, numpy as np
>>> layer = keras.layers.Dense(2)
>>> layer.build((None, 3))
>>> require_finite(layer, "a test layer")  # finite: nothing happens
>>> _ = layer.kernel.assign(np.full((3, 2), np.nan, "float32"))
>>> require_finite(layer, "a test layer")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
kplm.finite.NonFiniteWeightsError: not writing a test layer: weight ... is non-finite
"""
from kplm.errors import KplmError


class NonFiniteWeightsError(KplmError):
    """A model with a NaN or infinite weight was about to be written; nothing was written."""


def non_finite_weights(variables):
    """The paths (names) of the variables in ``variables`` that hold a NaN or an infinity."""
    import numpy as np
    bad = []
    for variable in variables:
        dtype = str(getattr(variable, "dtype", ""))
        if "float" not in dtype:  # ints (step counters, seed states), strings, bools
            continue
        value = variable.numpy() if hasattr(variable, "numpy") else np.asarray(variable)
        if not np.isfinite(np.asarray(value, dtype=np.float32)).all():
            bad.append(getattr(variable, "path", None) or getattr(variable, "name", "?"))
    return bad


def require_finite(model, what):
    """Raise ``NonFiniteWeightsError`` naming ``what`` (e.g. ``"runs/x/backbone.weights.h5"``)
    and the first bad weight when any weight of ``model`` (a Keras layer/model, or a list of
    variables) is non-finite. Call it before writing anything."""
    from kplm.errors import clip
    variables = model if isinstance(model, (list, tuple)) else model.weights
    bad = non_finite_weights(variables)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(
            f"not writing {clip(what, 120)}: weight {clip(bad[0], 60)}{more} is NaN or inf "
            "(the training diverged): lower trainer.learning_rate or check the data")


def require_finite_input(model, what):
    """Raise ``KplmError`` when a model just read from ``what`` (a weights file, a checkpoint
    directory) holds a NaN or an infinity: a damaged input, refused before it is used or
    trained on (kplm never writes one)."""
    from kplm.errors import clip
    bad = non_finite_weights(model.weights)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise KplmError(f"{clip(what, 160)}: weight {clip(bad[0], 60)}{more} is NaN or inf "
                        "in the file: a damaged checkpoint, not usable")
    return model
