"""Extractive question answering task model: start and end logits over the tokens."""
import keras
import keras_hub

from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class SpanLoss(keras.losses.Loss):
    """Sum of the start and end sparse cross-entropies. ``y_true``: ``[batch, 2]`` token
    positions (start, end); ``y_pred``: logits ``[batch, sequence, 2]``."""

    def __init__(self, name="span_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, "int32")
        start = keras.losses.sparse_categorical_crossentropy(
            y_true[:, 0], y_pred[:, :, 0], from_logits=True)
        end = keras.losses.sparse_categorical_crossentropy(
            y_true[:, 1], y_pred[:, :, 1], from_logits=True)
        return start + end


@keras.saving.register_keras_serializable(package="kplm")
class SpanAccuracy(keras.metrics.MeanMetricWrapper):
    """Share of start and end positions predicted exactly (the mean of start and end accuracy)."""

    def __init__(self, name="span_accuracy", dtype=None):
        super().__init__(_span_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _span_accuracy(y_true, y_pred):
    predicted = keras.ops.argmax(y_pred, axis=1)  # [batch, 2]
    hits = keras.ops.cast(predicted == keras.ops.cast(y_true, predicted.dtype), "float32")
    return keras.ops.mean(hits, axis=-1)


@keras.saving.register_keras_serializable(package="kplm")
class SpanExtractor(keras_hub.models.Task):
    """Scores every token as the start and the end of the answer span.

    The backbone's ``sequence_output`` goes through dropout and a ``Dense(2)`` in float32; padding
    positions get -10000. Outputs logits ``[batch, sequence, 2]`` (``[..., 0]`` start,
    ``[..., 1]`` end). Compiles itself with the sum of the start and end sparse cross-entropies
    (targets ``[batch, 2]``) and ``span_accuracy``.

    Args:
        backbone: a kplm ``Encoder``.
        dropout: float. Dropout before the output layer. Defaults to 0.1.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> model = SpanExtractor(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16,
    ...                               num_heads=2, intermediate_dim=32, sequence_length=8))
    >>> model.compile(optimizer="adam")
    """

    def __init__(self, backbone, dropout=0.1, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=backbone.dtype_policy,
                                                   name="output_dropout")
        self.output_dense = keras.layers.Dense(2, kernel_initializer=kernel_initializer(),
                                               dtype="float32", name="span_logits")
        # === Functional Model ===
        inputs = backbone.input
        sequence = backbone(inputs)["sequence_output"]
        logits = self.output_dense(self.output_dropout(sequence))
        mask = keras.ops.cast(inputs["padding_mask"], "float32")[:, :, None]
        outputs = logits + (1.0 - mask) * -10000.0
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.dropout = dropout

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """``keras.Model.compile`` with defaults: ``SpanLoss`` and ``SpanAccuracy``."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-5)
        if loss == "auto":
            loss = SpanLoss()
        if metrics == "auto":
            metrics = [SpanAccuracy()]
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout})
        return config
