"""The multi-objective pretraining model: one backbone, one output per objective."""
import keras


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

        The loss is the weighted sum of the parts' losses (``compute_loss``); each part's
        unweighted loss is logged as ``<output_name>_loss``.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-4)
        kwargs.setdefault("weighted_metrics", {p.output_name: p.metrics() for p in self.parts})
        super().compile(optimizer=optimizer, **kwargs)
        self.part_losses = {p.output_name: p.loss() for p in self.parts}
        # Keras' own per-output loss trackers under-report in evaluate() (keras 3.15: 0.8x the
        # true mean over 4 batches; an update from an empty batch counts as a full one), so the
        # parts' losses are computed here and tracked weighted by batch size.
        self.part_loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss")
                                   for name in self.part_losses}

    @property
    def metrics(self):
        return super().metrics + list(getattr(self, "part_loss_trackers", {}).values())

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        from keras.src.losses import loss as loss_module

        from kplm.training.step import target
        if not getattr(self, "part_losses", None) or self._compile_loss is not None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        total = []
        for name, loss_fn in self.part_losses.items():
            weight = None if sample_weight is None else sample_weight.get(name)
            with target(name):  # token losses divide by this output's global target count
                value = loss_fn(y[name], y_pred[name], weight)
            batch = keras.ops.cast(keras.ops.shape(y_pred[name])[0], "float32")
            self.part_loss_trackers[name].update_state(
                loss_module.unscale_loss_for_distribution(value), sample_weight=batch)
            total.append(value * self.loss_weights_by_output[name])
        total.extend(self._aggregate_additional_loss(loss) for loss in self.losses)
        return keras.ops.sum(keras.ops.stack(total))
