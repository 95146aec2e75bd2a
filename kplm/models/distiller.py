"""Task-specific knowledge distillation: a student task model trained on a fine-tuned teacher's
outputs (Hinton et al. 2015; Tang et al. 2019; Turc et al. 2019)."""
import keras

#: The kinds of task output a ``TaskDistiller`` distils.
KINDS = ("classification", "regression", "tokens")


class _Frozen:
    """Holds the teacher out of Keras' tracking: its weights are neither trained, nor in the
    student's checkpoints and best weights, nor in the saved model."""

    def __init__(self, model):
        self.model = model


def softened_kl(teacher_logits, student_logits, temperature):
    """``temperature**2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last axis,
    from logits (log-softmax, stable), in float32: the distillation term of Hinton et al. 2015,
    shared by ``TaskDistiller`` and ``kplm.models.lm_distiller.MaskedLMDistiller``.

    Example:
    >>> import numpy as np
    >>> float(softened_kl(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]]), 2.0)[0])
    0.0
    """
    ops = keras.ops
    t = float(temperature)
    teacher_log_p = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
    student_log_p = ops.log_softmax(ops.cast(student_logits, "float32") / t, axis=-1)
    return ops.sum(ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1) * (t * t)


class TaskDistiller(keras.Model):
    """Trains ``student`` (a kplm task model) to match ``teacher`` (the same task, fine-tuned)
    on the same inputs. The loss has two terms, each a mean over this batch's targets:

    * ``distillation``: for classification and token classification, the KL divergence from
      the teacher's to the student's class distribution, both softened at ``temperature``,
      times ``temperature**2`` (so its gradients keep their scale as the temperature changes);
      for regression, the squared difference between the two outputs;
    * ``gold``: the student's own task loss on the gold labels (cross-entropy or squared
      error), over the rows that have one. Unlabelled transfer rows carry label ``-1``
      (classification) or NaN (regression) and count in the first term only.

    weighted ``1 - gold_weight`` and ``gold_weight``. Calling the distiller calls the student;
    the teacher runs in inference mode in the same step, on the same token ids (the two share a
    tokenizer) and is never trained.

    Args:
        student: the kplm task model being trained.
        teacher: a kplm task model with the same outputs.
        kind: str. ``"classification"``, ``"regression"`` or ``"tokens"`` (token
            classification, whose data gives a per-token sample weight).
        temperature: float. Softmax temperature of both distributions. Defaults to 2.0.
        gold_weight: float. Weight of the gold-label term, in [0, 1]. Defaults to 0.5.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> from kplm.models.classifier import SequenceClassifier
    >>> def tiny(width):
    ...     return SequenceClassifier(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=width,
    ...                                       num_heads=2, intermediate_dim=32,
    ...                                       sequence_length=8), num_classes=2)
    >>> distiller = TaskDistiller(tiny(8), tiny(16), kind="classification")
    >>> distiller.compile(optimizer="adam")
    """

    def __init__(self, student, teacher, kind, temperature=2.0, gold_weight=0.5, **kwargs):
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.student = student
        teacher.trainable = False
        self._teacher = _Frozen(teacher)
        self.kind, self.temperature, self.gold_weight = kind, float(temperature), float(gold_weight)

    @property
    def teacher(self):
        return self._teacher.model

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compile(self, optimizer="auto", **kwargs):
        """The student's metrics (over the labelled rows only); the loss is ``loss_terms``."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(5e-5)
        kwargs.pop("loss", None)
        if self.kind == "regression":  # a per-batch correlation: no per-row weights
            keras.Model.compile(self, optimizer=optimizer, metrics=[
                keras.metrics.PearsonCorrelation(axis=0, name="pearson")], **kwargs)
        else:
            keras.Model.compile(self, optimizer=optimizer, weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")], **kwargs)

    # --- the loss --------------------------------------------------------------------------------
    def _gold_mask(self, y, sample_weight):
        """1.0 where a row (or token) has a gold label, else 0.0."""
        ops = keras.ops
        if self.kind == "classification":
            return ops.cast(ops.reshape(y, (-1,)) >= 0, "float32")
        if self.kind == "regression":
            return ops.cast(ops.isfinite(ops.reshape(y, (-1,))), "float32")
        return ops.cast(sample_weight, "float32")

    def loss_terms(self, x, y, y_pred, sample_weight):
        """``{"distillation": (1 - gold_weight, mean), "gold": (gold_weight, mean)}``."""
        ops = keras.ops
        student = ops.cast(y_pred, "float32")
        teacher = ops.stop_gradient(ops.cast(self.teacher(x, training=False), "float32"))
        gold = self._gold_mask(y, sample_weight)
        if self.kind == "regression":
            soft_values = ops.mean(ops.square(student - teacher), axis=-1)  # [rows]
            target = ops.where(gold[:, None] > 0, ops.cast(ops.reshape(y, (-1, 1)), "float32"),
                               student)
            soft = ops.mean(soft_values)
            gold_mean = ops.divide_no_nan(
                ops.sum(ops.mean(ops.square(student - target), axis=-1) * gold), ops.sum(gold))
            return {"distillation": (1.0 - self.gold_weight, soft),
                    "gold": (self.gold_weight, gold_mean)}
        kl = softened_kl(teacher, student, self.temperature)
        labels = ops.maximum(ops.cast(y, "int32"), 0)
        cross_entropy = keras.losses.sparse_categorical_crossentropy(labels, student,
                                                                     from_logits=True)
        if self.kind == "classification":
            soft = ops.mean(kl)
        else:  # tokens: the labelled positions (words' first pieces) of both terms
            soft = ops.divide_no_nan(ops.sum(kl * gold), ops.sum(gold))
        cross_entropy = ops.reshape(cross_entropy, ops.shape(gold))
        gold_mean = ops.divide_no_nan(ops.sum(cross_entropy * gold), ops.sum(gold))
        return {"distillation": (1.0 - self.gold_weight, soft),
                "gold": (self.gold_weight, gold_mean)}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The compiled metrics over the rows (tokens) with a gold label. Regression's Pearson
        correlation is computed per batch and takes no row weights: an unlabelled transfer
        row counts with its own prediction as its score (validation data is all labelled, so
        ``val_pearson``, which picks the best weights, is exact)."""
        ops = keras.ops
        mask = self._gold_mask(y, sample_weight)
        if self.kind == "regression":
            y = ops.where(ops.reshape(mask, ops.shape(y)) > 0, y,
                          ops.cast(ops.reshape(y_pred, ops.shape(y)), y.dtype))
            return super().compute_metrics(x, y, y_pred, None)
        if self.kind == "classification":
            y = ops.maximum(y, 0)
        return super().compute_metrics(x, y, y_pred, mask)


def project_embeddings(student, teacher):
    """Initialise ``student``'s token, position and segment embeddings from ``teacher``'s
    (two kplm ``Encoder`` backbones sharing a vocabulary): projected onto the teacher's
    ``student.hidden_dim`` leading principal directions (of its token embeddings), scaled to
    the student's initial spread, so a narrow student starts with the teacher's lexical
    geometry instead of random vectors; copied as they are when the widths agree. Positions
    beyond the student's table, and a missing segment table, are skipped. Returns the share
    of the token embeddings' variance the projection keeps.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> def encoder(width):
    ...     return Encoder(vocabulary_size=50, num_layers=1, hidden_dim=width, num_heads=2,
    ...                    intermediate_dim=32, sequence_length=8)
    >>> 0 < project_embeddings(encoder(8), encoder(16)) <= 1
    True
    """
    import numpy as np
    width = student.hidden_dim
    tokens = np.asarray(teacher.token_embedding.embeddings.numpy(), np.float64)
    if tokens.shape[0] != student.vocabulary_size:
        raise ValueError(f"the teacher's vocabulary ({tokens.shape[0]}) is not the student's "
                         f"({student.vocabulary_size})")
    mean = tokens.mean(axis=0)
    if width >= tokens.shape[1]:
        basis, kept = np.eye(tokens.shape[1], width), 1.0
    else:
        _, singular, vt = np.linalg.svd(tokens - mean, full_matrices=False)
        basis = vt[:width].T  # [teacher width, student width]
        kept = float((singular[:width] ** 2).sum() / (singular ** 2).sum())
    target = float(np.std(student.token_embedding.embeddings.numpy()))
    projected = (tokens - mean) @ basis
    scale = target / max(float(projected.std()), 1e-12)

    def assign(variable, values):
        variable.assign((values * scale).astype(variable.dtype))

    assign(student.token_embedding.embeddings, projected)
    positions = np.asarray(teacher.position_embedding.position_embeddings.numpy(), np.float64)
    table = student.position_embedding.position_embeddings
    rows = min(positions.shape[0], table.shape[0])
    if rows == table.shape[0]:
        assign(table, (positions[:rows] - positions[:rows].mean(axis=0)) @ basis)
    if student.segment_embedding is not None and teacher.segment_embedding is not None:
        segments = np.asarray(teacher.segment_embedding.embeddings.numpy(), np.float64)
        if segments.shape[0] == student.segment_embedding.embeddings.shape[0]:
            assign(student.segment_embedding.embeddings, (segments - segments.mean(0)) @ basis)
    return kept
