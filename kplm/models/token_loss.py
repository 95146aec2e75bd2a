"""The loss and metrics every kplm language model compiles with by default."""
import keras
import keras_hub


def token_loss():
    """Cross-entropy from logits averaged over the real target tokens: divided by the sum of
    the sample weights, so padded or unmasked slots (weight 0) do not dilute it."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")


def token_metrics():
    """Weighted token accuracy and perplexity (pass as ``weighted_metrics``)."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras_hub.metrics.Perplexity(from_logits=True, name="perplexity")]


def compile_defaults(optimizer="auto", loss="auto", weighted_metrics="auto"):
    """``(optimizer, loss, weighted_metrics)`` with ``"auto"`` replaced by kplm's language-model
    defaults: ``AdamW(5e-4)``, ``token_loss()``, ``token_metrics()``.

    Example:
    >>> optimizer, loss, metrics = compile_defaults()
    >>> loss.reduction, [m.name for m in metrics]
    ('mean_with_sample_weight', ['accuracy', 'perplexity'])
    """
    if optimizer == "auto":
        optimizer = keras.optimizers.AdamW(5e-4)
    if loss == "auto":
        loss = token_loss()
    if weighted_metrics == "auto":
        weighted_metrics = token_metrics()
    return optimizer, loss, weighted_metrics
