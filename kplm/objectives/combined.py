"""Several pretraining objectives trained together on one backbone (BERT = masked LM + NSP)."""
from kplm.components import Objective
from kplm.errors import ConfigError


class CombinedObjective(Objective):
    """Trains several objectives at once: one data stream, one model with an output per
    objective, the weighted sum of their losses, and every objective's metrics.

    Each part implements the combinable protocol and says so with ``combinable``
    (``kplm.components.Objective``; ``masked_lm``, ``next_sentence_prediction`` and
    ``sentence_order_prediction`` do; third-party objectives may):

    - ``output_name``: the key of its output, target and metrics (``masked_lm_accuracy``).
    - ``builds_rows``: True if the rows must come from it (sentence pairs); at most one part.
    - ``batches(source_ds, tokenizer, *, batch_size, sequence_length, seed, training)``: batches
      of feature dicts (``token_ids``, ``segment_ids``, ``padding_mask``, labels), repeated when
      training. The row builder's batches are used (the first part's if none builds rows).
    - ``transform(features, index, tokenizer, *, seed, training, sequence_length)``:
      ``(features, y, sample_weight)``; the parts run in order, each seeing the features the
      previous ones changed (masked LM masks the pairs next-sentence prediction built).
    - ``model_inputs()``: extra ``keras.Input``s by name; ``head(backbone)``: a function of the
      backbone outputs and the model inputs giving the part's logits; ``loss()``, ``metrics()``.

    Args:
        parts: list of objectives.
        weights: list of float, or None for all 1.0: the loss of each part is multiplied by its
            weight before summing.

    Example:
    >>> from kplm.objectives.masked_lm import MaskedLMObjective
    >>> from kplm.objectives.next_sentence import NextSentencePredictionObjective
    >>> bert = CombinedObjective([MaskedLMObjective(), NextSentencePredictionObjective()])
    >>> bert.output_names
    ['masked_lm', 'next_sentence']
    """

    def __init__(self, parts, weights=None):
        if not parts:
            raise ConfigError("config key 'objectives': expected at least one objective")
        for part in parts:
            if not part.combinable:
                raise ConfigError(f"objective '{part.name}' cannot be combined with others (it "
                                  "does not implement the combinable protocol); use it alone "
                                  "as 'objective:'")
        names = [p.output_name for p in parts]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"config key 'objectives': objective output '{name}' appears "
                                  "twice")
        builders = [p for p in parts if p.builds_rows]
        if len(builders) > 1:
            raise ConfigError("config key 'objectives': "
                              f"{' and '.join(p.name or p.output_name for p in builders)} both "
                              "build the training rows; combine at most one of them")
        self.parts = list(parts)
        self.weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
        self.builder = builders[0] if builders else parts[0]
        families = set(parts[0].families)
        for part in parts[1:]:
            families &= set(part.families)
        self.families = tuple(sorted(families))

    @property
    def output_names(self):
        return [p.output_name for p in self.parts]

    def dataset(self, source_ds, tokenizer, *, batch_size, sequence_length, seed=0,
                training=True):
        """``(x, {output: y}, {output: sample_weight})`` batches for ``model.fit``."""
        import tensorflow as tf

        batches = self.builder.batches(source_ds, tokenizer, batch_size=batch_size,
                                       sequence_length=sequence_length, seed=seed,
                                       training=training)

        def step(index, features):
            targets, weights = {}, {}
            for part in self.parts:
                features, y, weight = part.transform(
                    features, index, tokenizer, seed=seed, training=training,
                    sequence_length=sequence_length)
                targets[part.output_name], weights[part.output_name] = y, weight
            return features, targets, weights

        return batches.enumerate().map(step, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def build_model(self, backbone):
        """A ``kplm.models.pretrainer.Pretrainer`` with one output per part (compiles itself)."""
        from kplm.models.pretrainer import Pretrainer
        return Pretrainer(backbone, self.parts, self.weights)

    def tokens_per_row(self, sequence_length):
        return self.builder.tokens_per_row(sequence_length)
