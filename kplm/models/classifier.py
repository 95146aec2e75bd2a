"""Sequence classification task model: a backbone's pooled output, dropout, a linear layer."""
import keras
import keras_hub

from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class SequenceClassifier(keras_hub.models.TextClassifier):
    """Classifies a sequence (or a sentence pair) from one vector per sequence: the backbone's
    ``pooled_output`` (BERT's tanh pooler over ``[CLS]``), the ``[CLS]`` hidden state, or the
    mean of the hidden states over real tokens (what sentence-transformers models are trained
    for).

    Outputs logits ``[batch, num_classes]`` in float32. Compiles itself with sparse categorical
    cross-entropy from logits and accuracy.

    Args:
        backbone: a kplm ``Encoder``.
        num_classes: int. Number of labels.
        dropout: float. Dropout before the output layer. Defaults to 0.1.
        pooling: str. ``"pooler"``, ``"cls"`` or ``"mean"``. Defaults to ``"pooler"``.
        output_bias: float. Initial bias of the output layer (a regression's mean target).
            Defaults to 0.0.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> model = SequenceClassifier(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16,
    ...                                    num_heads=2, intermediate_dim=32, sequence_length=8),
    ...                            num_classes=3)
    >>> model.compile(optimizer="adam")
    """

    def __init__(self, backbone, num_classes, dropout=0.1, pooling="pooler", output_bias=0.0,
                 preprocessor=None, **kwargs):
        if pooling not in ("pooler", "cls", "mean"):
            raise ValueError(f"pooling must be 'pooler', 'cls' or 'mean', not {pooling!r}")
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=backbone.dtype_policy,
                                                   name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, kernel_initializer=kernel_initializer(),
            bias_initializer=keras.initializers.Constant(output_bias), dtype="float32",
            name="logits")
        # === Functional Model ===
        self.pooling = pooling
        inputs = backbone.input
        outputs = self.logits_from(backbone(inputs), inputs["padding_mask"])
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.num_classes = num_classes
        self.dropout = dropout
        self.output_bias = output_bias

    def logits_from(self, encoded, padding_mask, training=None):
        """The head on the backbone's outputs (``{"sequence_output", "pooled_output"}``):
        pooling, dropout, the output layer. The model is this applied to ``backbone(inputs)``;
        a distiller that reads the backbone's layers itself calls it directly."""
        if self.pooling == "pooler":
            pooled = encoded["pooled_output"]
        elif self.pooling == "cls":
            pooled = encoded["sequence_output"][:, 0, :]
        else:
            sequence = encoded["sequence_output"]
            mask = keras.ops.cast(padding_mask, sequence.dtype)[:, :, None]
            pooled = keras.ops.sum(sequence * mask, axis=1) / keras.ops.maximum(
                keras.ops.sum(mask, axis=1), 1.0)
        return self.output_dense(self.output_dropout(pooled, training=training))

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """``keras.Model.compile`` with defaults: cross-entropy from logits, ``accuracy``."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-5)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "dropout": self.dropout,
                       "pooling": self.pooling, "output_bias": self.output_bias})
        return config


@keras.saving.register_keras_serializable(package="kplm")
class SequenceRegressor(SequenceClassifier):
    """A ``SequenceClassifier`` with one real-valued output, trained with mean squared error;
    compiles itself with ``pearson`` correlation as its metric.

    Args:
        backbone: a kplm ``Encoder``.
        dropout: float. Dropout before the output layer. Defaults to 0.1.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> model = SequenceRegressor(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16,
    ...                                   num_heads=2, intermediate_dim=32, sequence_length=8))
    >>> model.compile(optimizer="adam")
    """

    def __init__(self, backbone, dropout=0.1, num_classes=1, **kwargs):
        super().__init__(backbone, num_classes=1, dropout=dropout, **kwargs)

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        if loss == "auto":
            loss = keras.losses.MeanSquaredError()
        if metrics == "auto":
            metrics = [keras.metrics.PearsonCorrelation(axis=0, name="pearson")]  # across the batch
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
