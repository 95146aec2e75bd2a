"""The loss and metrics every kplm language model compiles with by default."""
import keras
import keras_hub


@keras.saving.register_keras_serializable(package="kplm")
class TokenLoss(keras.losses.SparseCategoricalCrossentropy):
    """Cross-entropy from logits averaged over the real target tokens: the per-token losses
    times the sample weights, summed, divided by the sum of the sample weights (Keras'
    ``reduction="mean_with_sample_weight"``), so padded or unmasked slots (weight 0) do not
    dilute it. Computed in float32 whatever the logits' dtype (mixed precision).

    A plain Keras loss: in ``fit`` each replica averages over its own tokens, as Keras does.
    kplm's training step goes further and averages over the tokens of the whole global batch,
    across replicas and micro-batches (``kplm.training.step``).

    Args:
        name: str. Defaults to ``"token_loss"``.

    Example:
    >>> import numpy as np
    >>> loss = TokenLoss()
    >>> logits = np.zeros((1, 3, 4), "float32")  # uniform over 4 classes: log(4) per token
    >>> round(float(loss(np.array([[1, 2, 0]]), logits, np.array([[1.0, 1.0, 0.0]]))), 4)
    1.3863
    """

    def __init__(self, name="token_loss", **kwargs):
        for key in ("reduction", "from_logits", "dtype", "ignore_class"):
            kwargs.pop(key, None)
        super().__init__(from_logits=True, name=name, reduction="mean_with_sample_weight",
                         dtype="float32", **kwargs)

    def call(self, y_true, y_pred):
        return super().call(y_true, keras.ops.cast(y_pred, "float32"))

    def get_config(self):
        return {"name": self.name}


def weighted_count(weight, like):
    """The sum of ``weight`` broadcast to ``like``'s shape: the number of targets a weighted
    mean over ``like`` divides by.

    Example:
    >>> import numpy as np
    >>> float(weighted_count(np.array([1.0, 0.0]), np.zeros((2, 3))))
    3.0
    """
    weight = keras.ops.cast(weight, "float32")
    while len(weight.shape) < len(like.shape):
        weight = keras.ops.expand_dims(weight, -1)
    return keras.ops.sum(keras.ops.broadcast_to(weight, keras.ops.shape(like)))


def weighted_mean(loss_fn, y_true, y_pred, weight):
    """``loss_fn``'s per-target values (``loss_fn.call``) averaged with ``weight``: the loss over
    this batch's own targets (0 when it has none), in float32, not divided by replicas, and
    without the Keras masks a model's outputs may carry (the weights say which targets count).

    Example:
    >>> import numpy as np
    >>> logits = np.zeros((1, 3, 4), "float32")  # log(4) per token
    >>> round(float(weighted_mean(TokenLoss(), np.array([[1, 2, 0]]), logits,
    ...                           np.array([[1.0, 1.0, 0.0]]))), 4)
    1.3863
    """
    # converted as ``Loss.__call__`` converts them: the graph's common-subexpression pass then
    # merges this cross-entropy with the one keras-hub's Perplexity computes on the same logits
    # (one softmax over the vocabulary per step instead of two: ~20% of a tiny BERT's step)
    dtype = getattr(loss_fn, "dtype", None) or "float32"
    y_true, y_pred = (keras.ops.convert_to_tensor(t, dtype=dtype) for t in (y_true, y_pred))
    values = keras.ops.cast(loss_fn.call(y_true, y_pred), "float32")
    if weight is None:
        return keras.ops.mean(values)
    weight = keras.ops.cast(weight, "float32")
    while len(weight.shape) < len(values.shape):
        weight = keras.ops.expand_dims(weight, -1)
    weight = keras.ops.broadcast_to(weight, keras.ops.shape(values))
    return keras.ops.divide_no_nan(keras.ops.sum(values * weight), keras.ops.sum(weight))


def token_loss():
    """kplm's language-model loss, a ``TokenLoss``: cross-entropy averaged over the real target
    tokens (the sum of the sample weights)."""
    return TokenLoss()


def token_metrics():
    """Weighted token accuracy and perplexity (pass as ``weighted_metrics``)."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras_hub.metrics.Perplexity(from_logits=True, name="perplexity")]


def compile_defaults(optimizer="auto", loss="auto", weighted_metrics="auto"):
    """``(optimizer, loss, weighted_metrics)`` with ``"auto"`` replaced by kplm's language-model
    defaults: ``AdamW(5e-4)``, ``token_loss()``, ``token_metrics()``.

    Example:
    >>> optimizer, loss, metrics = compile_defaults()
    >>> loss.name, [m.name for m in metrics]
    ('token_loss', ['accuracy', 'perplexity'])
    """
    if optimizer == "auto":
        optimizer = keras.optimizers.AdamW(5e-4)
    if loss == "auto":
        loss = token_loss()
    if weighted_metrics == "auto":
        weighted_metrics = token_metrics()
    return optimizer, loss, weighted_metrics
