"""The loss and metrics every kplm language model compiles with by default."""
import keras
import keras_hub


@keras.saving.register_keras_serializable(package="kplm")
class TokenLoss(keras.losses.Loss):
    """Cross-entropy from logits averaged over the real target tokens of the *global* batch.

    The per-token losses times the sample weights are summed, then divided by the sum of the
    sample weights over every replica (and every micro-batch of an accumulated step, see
    ``kplm.training.step``): padded or unmasked slots (weight 0) do not dilute it, and replicas
    holding different numbers of target tokens do not bias it (averaging each replica's own
    mean would). Computed in float32 whatever the logits' dtype (mixed precision).

    Like every Keras loss under ``tf.distribute``, the value is this replica's share: the
    replicas' values add up to the mean (with one replica, it is the mean).

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
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", dtype="float32", **kwargs)

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(
            y_true, keras.ops.cast(y_pred, "float32"), from_logits=True)

    def __call__(self, y_true, y_pred, sample_weight=None):
        from kplm.training.step import global_mean
        with keras.name_scope(self.name):
            values = self.call(y_true, y_pred)
            if sample_weight is None:
                weights = keras.ops.ones_like(values)
            else:
                weights = keras.ops.cast(sample_weight, "float32")
                while len(weights.shape) < len(values.shape):  # per-example weights
                    weights = keras.ops.expand_dims(weights, -1)
                weights = keras.ops.broadcast_to(weights, keras.ops.shape(values))
            return global_mean(keras.ops.sum(values * weights), keras.ops.sum(weights))

    def get_config(self):
        return {"name": self.name}


def token_loss():
    """kplm's language-model loss, a ``TokenLoss``: cross-entropy averaged over the real target
    tokens (the sum of the sample weights) of the global batch."""
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
