"""Token classification task model: a backbone's sequence output, dropout, a linear layer."""
import keras
import keras_hub

from kplm.models.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="kplm")
class TokenClassifier(keras_hub.models.Task):
    """Labels every token from the backbone's ``sequence_output`` (e.g. NER tags).

    Outputs logits ``[batch, length, num_labels]`` in float32. Compiles itself with sparse
    categorical cross-entropy from logits averaged over the tokens whose sample weight is 1 (a
    word's first piece; other pieces, ``[CLS]``/``[SEP]`` and padding weigh 0) and ``accuracy``
    over those same tokens; the data gives ``(x, labels, sample_weight)``.

    Args:
        backbone: a kplm ``Encoder``.
        num_labels: int. Number of tags.
        dropout: float. Dropout before the output layer. Defaults to 0.1.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> model = TokenClassifier(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16,
    ...                                 num_heads=2, intermediate_dim=32, sequence_length=8),
    ...                         num_labels=5)
    >>> model.compile(optimizer="adam")
    """

    def __init__(self, backbone, num_labels, dropout=0.1, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=backbone.dtype_policy,
                                                   name="output_dropout")
        self.output_dense = keras.layers.Dense(num_labels, kernel_initializer=kernel_initializer(),
                                               dtype="float32", name="logits")
        # === Functional Model ===
        inputs = backbone.input
        outputs = self.logits_from(backbone(inputs), inputs["padding_mask"])
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.num_labels = num_labels
        self.dropout = dropout

    def logits_from(self, encoded, padding_mask=None, training=None):
        """The head on the backbone's outputs: dropout and the per-token output layer (see
        ``SequenceClassifier.logits_from``)."""
        return self.output_dense(self.output_dropout(encoded["sequence_output"],
                                                     training=training))

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """``keras.Model.compile`` with defaults: masked cross-entropy, masked ``accuracy``."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-5)
        if loss == "auto":
            from kplm.models.token_loss import token_loss
            loss = token_loss()  # averaged over the labelled tokens of the global batch
        if metrics == "auto":
            kwargs.setdefault("weighted_metrics",
                              [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
            metrics = None
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"num_labels": self.num_labels, "dropout": self.dropout})
        return config
