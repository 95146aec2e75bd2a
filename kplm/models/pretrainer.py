"""The multi-objective pretraining model: one backbone, one output per objective."""
import keras

from kplm.models.token_loss import weighted_count, weighted_mean


class Pretrainer(keras.Model):
    """A backbone with one head per objective (``kplm.objectives.combined``); its outputs are a
    dict keyed by each objective's ``output_name``, trained on the weighted sum of their losses.

    Only the backbone is meant to outlive training (``kplm.runs.save_backbone``); the heads are
    the objectives' business, so this model is not registered for ``.keras`` serialization.

    Args:
        backbone: the backbone (e.g. a kplm ``Encoder``).
        parts: combinable objectives (``model_inputs``, ``head``, ``loss``, ``metrics``).
        weights: loss weight of each part.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> from kplm.objectives.masked_lm import MaskedLMObjective
    >>> from kplm.objectives.next_sentence import NextSentencePredictionObjective
    >>> model = Pretrainer(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16, num_heads=2,
    ...                            intermediate_dim=32, sequence_length=8),
    ...                    [MaskedLMObjective(), NextSentencePredictionObjective()], [1.0, 1.0])
    >>> sorted(model.loss_weights_by_output)
    ['masked_lm', 'next_sentence']
    """

    def __init__(self, backbone, parts, weights, **kwargs):
        # === Layers ===
        self.backbone = backbone
        heads = {part.output_name: part.head(backbone) for part in parts}

        # === Functional Model ===
        inputs = dict(backbone.input)
        for part in parts:
            inputs.update(part.model_inputs())
        features = backbone(dict(backbone.input))
        outputs = {name: head(features, inputs) for name, head in heads.items()}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.parts = list(parts)
        self.loss_weights_by_output = {p.output_name: float(w) for p, w in zip(parts, weights)}

    def compile(self, optimizer="auto", **kwargs):
        """Like ``keras.Model.compile``, with each objective's loss, weight and metrics.

        The loss is the weighted sum of the parts' losses (``loss_terms``, one term per
        objective, each a mean over that output's targets); ``fit`` logs each part's loss as
        ``<output_name>_loss``.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-4)
        kwargs.setdefault("weighted_metrics", {p.output_name: p.metrics() for p in self.parts})
        super().compile(optimizer=optimizer, **kwargs)
        self.part_losses = {p.output_name: p.loss() for p in self.parts}
        # Keras' own per-output loss trackers under-report in evaluate() (keras 3.15: 0.8x the
        # true mean over 4 batches; an update from an empty batch counts as a full one), so the
        # parts' losses are tracked here, weighted by their target counts.
        self.part_loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss")
                                   for name in self.part_losses}

    @property
    def metrics(self):
        return super().metrics + list(getattr(self, "part_loss_trackers", {}).values())

    def target_counts(self, x, y, sample_weight):
        """The targets of each part's loss in this batch: the sum of its sample weights (rows
        for a part without them)."""
        counts = {}
        for name in self.part_losses:
            weight = None if sample_weight is None else sample_weight.get(name)
            counts[name] = (keras.ops.cast(keras.ops.shape(y[name])[0], "float32")
                            if weight is None else weighted_count(weight, y[name]))
        return counts

    def loss_terms(self, x, y, y_pred, sample_weight):
        """``{output_name: (weight, mean)}``: each part's loss over its own targets."""
        terms = {}
        for name, loss_fn in self.part_losses.items():
            weight = None if sample_weight is None else sample_weight.get(name)
            terms[name] = (self.loss_weights_by_output[name],
                           weighted_mean(loss_fn, y[name], y_pred[name], weight))
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """What ``fit`` trains on: the weighted sum of ``loss_terms`` (plus any regularizer
        losses), as this replica's share under a ``tf.distribute`` strategy."""
        if not getattr(self, "part_losses", None) or self.loss is not None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        counts = self.target_counts(x, y, sample_weight)
        total = []
        for name, (weight, mean) in self.loss_terms(x, y, y_pred, sample_weight).items():
            self.part_loss_trackers[name].update_state(mean, sample_weight=counts[name])
            total.append(mean * weight)
        total.extend(keras.ops.cast(loss, "float32") for loss in self.losses)
        return replica_share(keras.ops.sum(keras.ops.stack(total)))


def replica_share(value):
    """``value`` divided by the number of replicas in sync (what Keras expects a loss to be
    under ``tf.distribute``: the replicas' gradients are summed)."""
    import tensorflow as tf
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value
