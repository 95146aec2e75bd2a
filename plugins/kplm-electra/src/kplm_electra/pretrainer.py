"""The ELECTRA pretraining model: generator, sampled replacements, discriminator (the backbone)."""
import keras
import keras_hub
import tensorflow as tf
from keras import ops
from keras_hub.layers import MaskedLMHead

from kplm_electra.electra import generator_sizes
from kplm_electra.generator import ElectraGenerator


def _initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="kplm_electra")
class TokenReplacer(keras.layers.Layer):
    """Samples one token per prediction slot from the generator's softmax (categorical
    sampling, no gradient) and writes it into the row at the slot's position; slots of weight 0
    (padding) change nothing.

    Inputs: ``logits`` ``[batch, slots, vocabulary]``, ``token_ids`` ``[batch, length]``,
    ``mask_positions`` ``[batch, slots]`` and ``mask_weights`` ``[batch, slots]``. Returns the
    sampled ids ``[batch, slots]`` and the rows with the samples written in.

    Args:
        temperature: float. Divides the logits before sampling. Defaults to 1.0.
        seed: int or None. Seed of the sampling. Defaults to None.

    Example:
    >>> import numpy as np
    >>> logits = np.array([[[0.0, 0.0, 50.0]]], "float32")   # certain to sample token 2
    >>> sampled, rows = TokenReplacer(seed=1)(logits, np.array([[7, 8, 9]], "int32"),
    ...                                       np.array([[1]], "int32"), np.ones((1, 1)))
    >>> ops.convert_to_numpy(rows).tolist()
    [[7, 2, 9]]
    """

    def __init__(self, temperature=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, logits, token_ids, mask_positions, mask_weights):
        logits = ops.cast(ops.stop_gradient(logits), "float32") / self.temperature
        slots = ops.shape(mask_positions)
        sampled = keras.random.categorical(ops.reshape(logits, (-1, ops.shape(logits)[-1])), 1,
                                           seed=self.seed_generator)
        sampled = ops.reshape(ops.cast(sampled, "int32"), slots)
        # [batch, slots, length]: slot -> position; padded slots (weight 0) point nowhere.
        real = ops.cast(ops.greater(mask_weights, 0), "int32")
        where = ops.one_hot(mask_positions, ops.shape(token_ids)[1], dtype="int32")
        where = where * real[..., None]
        chosen = ops.greater(ops.sum(where, axis=1), 0)
        replacement = ops.sum(where * sampled[..., None], axis=1)  # positions are unique
        return sampled, ops.where(chosen, replacement, token_ids)

    def compute_output_spec(self, logits, token_ids, mask_positions, mask_weights):
        return (keras.KerasTensor(mask_positions.shape, "int32"),
                keras.KerasTensor(token_ids.shape, "int32"))

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="kplm_electra")
class ElectraPretrainer(keras_hub.models.Task):
    """ELECTRA's replaced-token detection around a kplm ``Encoder``, which is the
    discriminator; the generator shares its token, position and segment embeddings (and their
    layer norm), as in the paper.

    Inputs: the backbone's (``token_ids`` with the chosen tokens corrupted, ``segment_ids``,
    ``padding_mask``) plus ``mask_positions`` and ``mask_weights`` ``[batch, slots]``; targets
    ``y`` are the original tokens of the slots, sample weights the slot weights (what
    ``ElectraObjective.dataset`` yields). Outputs a dict: ``generator_logits`` ``[batch, slots,
    vocabulary]``, ``sampled_ids`` ``[batch, slots]``, ``discriminator_ids`` (the rows the
    discriminator reads) and ``discriminator_logits`` ``[batch, length]`` (float32; > 0 means
    "replaced").

    Compiles itself: ``compute_loss`` is ``generator_weight`` x the generator's cross-entropy
    (mean over real slots) + ``discriminator_weight`` x the discriminator's binary
    cross-entropy (mean over real tokens); ``compile`` takes only the optimizer and Keras'
    options (``jit_compile``, ``steps_per_execution``, ...).

    Args:
        backbone: a kplm ``Encoder`` (the discriminator; what pretraining keeps).
        generator_size: float. Generator width as a share of the backbone's. Defaults to 0.25.
        generator_hidden_dim, generator_num_layers, generator_num_heads,
        generator_intermediate_dim: int or None. Explicit generator sizes (see
            ``ElectraObjective``). Default to None.
        generator_weight: float. Defaults to 1.0.
        discriminator_weight: float. Defaults to 50.0.
        temperature: float. Sampling temperature. Defaults to 1.0.

    Example:
    >>> import kplm
    >>> backbone = kplm.Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16, num_heads=2,
    ...                         intermediate_dim=32, sequence_length=8)
    >>> model = ElectraPretrainer(backbone)
    >>> model.generator.hidden_dim, model.generator_head.token_embedding is backbone.token_embedding
    (4, True)
    """

    def __init__(self, backbone, generator_size=0.25, generator_hidden_dim=None,
                 generator_num_layers=None, generator_num_heads=None,
                 generator_intermediate_dim=None, generator_weight=1.0,
                 discriminator_weight=50.0, temperature=1.0, preprocessor=None, **kwargs):
        sizes = generator_sizes(
            backbone.hidden_dim, backbone.num_layers, backbone.num_heads,
            backbone.intermediate_dim, size=generator_size,
            generator_hidden_dim=generator_hidden_dim, generator_num_layers=generator_num_layers,
            generator_num_heads=generator_num_heads,
            generator_intermediate_dim=generator_intermediate_dim)
        policy = backbone.dtype_policy
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        # The backbone's own embedding layers as a model: calling it is reusing their variables.
        self.shared_embeddings = keras.Model(
            backbone.input, backbone.get_layer("embeddings_dropout").output,
            name="shared_embeddings")
        self.generator = ElectraGenerator(
            embedding_dim=backbone.hidden_dim, **sizes, dropout=backbone.dropout,
            activation=backbone.activation, layer_norm_epsilon=backbone.layer_norm_epsilon,
            normalize_first=backbone.normalize_first, dtype=policy, name="generator")
        self.generator_head = MaskedLMHead(  # tied to the shared token embedding
            token_embedding=backbone.token_embedding,
            intermediate_activation=keras.activations.gelu, kernel_initializer=_initializer(),
            dtype=policy, name="generator_head")
        self.token_replacer = TokenReplacer(temperature, dtype=policy, name="token_replacer")
        self.discriminator_dense = keras.layers.Dense(
            backbone.hidden_dim, activation=keras.activations.gelu,
            kernel_initializer=_initializer(), dtype=policy, name="discriminator_dense")
        self.discriminator_output = keras.layers.Dense(
            1, kernel_initializer=_initializer(), dtype="float32", name="discriminator_logits")

        # === Functional Model ===
        inputs = {**backbone.input,
                  "mask_positions": keras.Input(shape=(None,), dtype="int32",
                                                name="mask_positions"),
                  "mask_weights": keras.Input(shape=(None,), dtype="float32",
                                              name="mask_weights")}
        embedded = self.shared_embeddings(backbone.input)
        generated = self.generator(embedded, inputs["padding_mask"])
        generator_logits = self.generator_head(generated, inputs["mask_positions"])
        sampled, corrupted = self.token_replacer(generator_logits, inputs["token_ids"],
                                                 inputs["mask_positions"],
                                                 inputs["mask_weights"])
        sequence = backbone({"token_ids": corrupted, "segment_ids": inputs["segment_ids"],
                             "padding_mask": inputs["padding_mask"]})["sequence_output"]
        discriminator_logits = ops.squeeze(
            self.discriminator_output(self.discriminator_dense(sequence)), axis=-1)
        outputs = {"generator_logits": generator_logits, "sampled_ids": sampled,
                   "discriminator_ids": corrupted, "discriminator_logits": discriminator_logits}
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.generator_size = generator_size
        self.generator_hidden_dim = generator_hidden_dim
        self.generator_num_layers = generator_num_layers
        self.generator_num_heads = generator_num_heads
        self.generator_intermediate_dim = generator_intermediate_dim
        self.generator_weight = generator_weight
        self.discriminator_weight = discriminator_weight
        self.temperature = temperature

        # === Metrics ===
        self.generator_loss_tracker = keras.metrics.Mean(name="generator_loss")
        self.discriminator_loss_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.generator_accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="generator_accuracy")
        self.discriminator_accuracy = keras.metrics.BinaryAccuracy(
            name="discriminator_accuracy", threshold=0.0)  # on logits
        self.replaced_share = keras.metrics.Mean(name="replaced_share")

    def compile(self, optimizer="auto", **kwargs):
        """``keras.Model.compile`` with the optimizer only (default ``AdamW(5e-4)``): the loss
        and metrics are ELECTRA's (``compute_loss``, ``compute_metrics``)."""
        for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
            if kwargs.get(key) not in (None, "auto"):
                raise ValueError(f"ElectraPretrainer computes its own {key}; do not pass {key}=")
            kwargs.pop(key, None)
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-4)
        keras.Model.compile(self, optimizer=optimizer, **kwargs)

    def replaced_labels(self, x, y, y_pred):
        """1.0 where the discriminator's row differs from the original, else 0.0
        ``[batch, length]``: real slots whose sample is not the original token ``y``."""
        replaced = ops.logical_and(ops.not_equal(y_pred["sampled_ids"], ops.cast(y, "int32")),
                                   ops.greater(x["mask_weights"], 0))
        where = ops.one_hot(x["mask_positions"], ops.shape(x["token_ids"])[1])
        return ops.max(where * ops.cast(replaced, where.dtype)[..., None], axis=1)

    def target_counts(self, x, y, sample_weight):
        """The targets of each loss term in this batch (kplm's train step averages each term
        over the targets of the whole global batch): masked slots for the generator, real
        tokens for the discriminator."""
        return {"generator": ops.sum(ops.cast(sample_weight, "float32")),
                "discriminator": ops.sum(ops.cast(x["padding_mask"], "float32"))}

    def loss_terms(self, x, y, y_pred, sample_weight):
        """``{name: (weight, mean)}``: the generator's MLM loss over the masked slots and the
        discriminator's replaced-token loss over the real tokens, each over this batch."""
        slot_weights = ops.cast(sample_weight, "float32")
        per_slot = keras.losses.sparse_categorical_crossentropy(
            y, ops.cast(y_pred["generator_logits"], "float32"), from_logits=True)
        generator_loss = ops.divide_no_nan(ops.sum(per_slot * slot_weights),
                                           ops.sum(slot_weights))
        token_weights = ops.cast(x["padding_mask"], "float32")
        per_token = keras.losses.binary_crossentropy(
            self.replaced_labels(x, y, y_pred)[..., None],
            y_pred["discriminator_logits"][..., None], from_logits=True)
        discriminator_loss = ops.divide_no_nan(ops.sum(per_token * token_weights),
                                               ops.sum(token_weights))
        return {"generator": (self.generator_weight, generator_loss),
                "discriminator": (self.discriminator_weight, discriminator_loss)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """What ``fit`` trains on: the weighted sum of ``loss_terms`` plus regularizers, as this
        replica's share (Keras sums the replicas' gradients)."""
        terms = self.loss_terms(x, y, y_pred, sample_weight)
        counts = self.target_counts(x, y, sample_weight)
        # Weighted by a count read from the batch: an unweighted update of a constant count would
        # also run on the step that finds a finite dataset exhausted, diluting validation means.
        self.generator_loss_tracker.update_state(terms["generator"][1], counts["generator"])
        self.discriminator_loss_tracker.update_state(terms["discriminator"][1],
                                                     counts["discriminator"])
        total = sum(weight * mean for weight, mean in terms.values())
        for extra in self.losses:  # regularizers, add_loss
            total = total + ops.cast(extra, total.dtype)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return total / replicas

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels = self.replaced_labels(x, y, y_pred)
        token_weights = ops.cast(x["padding_mask"], "float32")
        self.generator_accuracy.update_state(y, y_pred["generator_logits"], sample_weight)
        self.discriminator_accuracy.update_state(labels[..., None],
                                                 y_pred["discriminator_logits"][..., None],
                                                 token_weights)
        self.replaced_share.update_state(labels, token_weights)
        return self.get_metrics_result()

    def get_config(self):
        config = super().get_config()
        config.update({
            "generator_size": self.generator_size,
            "generator_hidden_dim": self.generator_hidden_dim,
            "generator_num_layers": self.generator_num_layers,
            "generator_num_heads": self.generator_num_heads,
            "generator_intermediate_dim": self.generator_intermediate_dim,
            "generator_weight": self.generator_weight,
            "discriminator_weight": self.discriminator_weight,
            "temperature": self.temperature,
        })
        return config
