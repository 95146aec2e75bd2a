"""Task-specific knowledge distillation: a student task model trained on a fine-tuned teacher's
outputs (Hinton et al. 2015; Tang et al. 2019; Turc et al. 2019)."""
import keras

from kplm.training.distillation import TEACHER_OUTPUTS


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

    weighted ``1 - gold_weight`` and ``gold_weight``; and, with ``hidden_weight``, a third:

    * ``hidden``: each student layer's output (embeddings first), through a learned projection
      to the teacher's width, against its teacher layer's (``layer_map``), squared and averaged
      over the real tokens (TinyBERT, Jiao et al. 2020).

    Calling the distiller calls the student;
    the teacher runs in inference mode in the same step, on the same token ids (the two share a
    tokenizer) and is never trained.

    Args:
        student: the kplm task model being trained.
        teacher: a kplm task model with the same outputs.
        kind: str. ``"classification"``, ``"regression"`` or ``"tokens"`` (token
            classification, whose data gives a per-token sample weight).
        temperature: float. Softmax temperature of both distributions. Defaults to 2.0.
        gold_weight: float. Weight of the gold-label term, in [0, 1]. Defaults to 0.5.
        hidden_weight: float. Weight of the hidden-state term (both backbones kplm
            ``Encoder``s). Defaults to 0 (off).

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

    def __init__(self, student, teacher, kind, temperature=2.0, gold_weight=0.5,
                 hidden_weight=0.0, **kwargs):
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.student = student
        teacher.trainable = False
        self._teacher = _Frozen(teacher)
        self.kind, self.temperature, self.gold_weight = kind, float(temperature), float(gold_weight)
        self.hidden_weight = float(hidden_weight)
        if self.hidden_weight:
            # both backbones' layer outputs from one forward pass each; the student's feature
            # model shares the student's weights (tracked there, not here)
            self._features = _Frozen((layer_outputs(student.backbone),
                                      layer_outputs(teacher.backbone)))
            self.layer_pairs = layer_map(student.backbone.num_layers,
                                         teacher.backbone.num_layers)
            self.hidden_projections = [
                keras.layers.Dense(teacher.backbone.hidden_dim, dtype="float32",
                                   name=f"hidden_projection_{s}") for s, _ in self.layer_pairs]
            for projection in self.hidden_projections:  # built now: the optimizer sees them
                projection.build((None, None, student.backbone.hidden_dim))

    @property
    def teacher(self):
        return self._teacher.model

    def call(self, inputs, training=False):
        """The student's outputs; with ``hidden_weight``, ``{"logits", "hidden"}``: its logits
        and its layer outputs (embeddings first), from the same forward pass."""
        inputs = {k: v for k, v in inputs.items() if k != TEACHER_OUTPUTS}
        if not self.hidden_weight:
            return self.student(inputs, training=training)
        student_features, _ = self._features.model
        encoded = student_features(inputs, training=training)
        logits = self.student.logits_from(encoded, inputs["padding_mask"], training=training)
        return {"logits": logits, "hidden": encoded["hidden"]}

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
        """``{"distillation": (1 - gold_weight, mean), "gold": (gold_weight, mean)}``, and
        ``"hidden": (hidden_weight, mean)`` when that term is on."""
        ops = keras.ops
        terms = {}
        if self.hidden_weight:
            _, teacher_features = self._features.model
            encoded = teacher_features(x, training=False)
            teacher = self.teacher.logits_from(encoded, x["padding_mask"], training=False)
            terms["hidden"] = (self.hidden_weight, self._hidden_term(
                y_pred["hidden"], encoded["hidden"], x["padding_mask"]))
            y_pred = y_pred["logits"]
        elif TEACHER_OUTPUTS in x:  # cached before training (CachedTeacherOutputs)
            teacher = ops.reshape(x[TEACHER_OUTPUTS], ops.shape(y_pred))
        else:
            teacher = self.teacher(x, training=False)
        student = ops.cast(y_pred, "float32")
        teacher = ops.stop_gradient(ops.cast(teacher, "float32"))
        gold = self._gold_mask(y, sample_weight)
        if self.kind == "regression":
            soft_values = ops.mean(ops.square(student - teacher), axis=-1)  # [rows]
            target = ops.where(gold[:, None] > 0, ops.cast(ops.reshape(y, (-1, 1)), "float32"),
                               student)
            soft = ops.mean(soft_values)
            gold_mean = ops.divide_no_nan(
                ops.sum(ops.mean(ops.square(student - target), axis=-1) * gold), ops.sum(gold))
            return {"distillation": (1.0 - self.gold_weight, soft),
                    "gold": (self.gold_weight, gold_mean), **terms}
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
                "gold": (self.gold_weight, gold_mean), **terms}

    def _hidden_term(self, student_hidden, teacher_hidden, padding_mask):
        """The mean, over the layer pairs, the real tokens and the teacher's width, of the
        squared difference between a student layer's output, projected to the teacher's width,
        and its teacher layer's (TinyBERT's hidden-state loss, Jiao et al. 2020)."""
        ops = keras.ops
        real = ops.cast(padding_mask, "float32")
        total = 0.0
        for (s, t), projection in zip(self.layer_pairs, self.hidden_projections):
            target = ops.stop_gradient(ops.cast(teacher_hidden[t], "float32"))
            projected = projection(ops.cast(student_hidden[s], "float32"))
            squared = ops.mean(ops.square(projected - target), axis=-1)
            total += ops.divide_no_nan(ops.sum(squared * real), ops.sum(real))
        return total / len(self.layer_pairs)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The compiled metrics over the rows (tokens) with a gold label. Regression's Pearson
        correlation is computed per batch and takes no row weights: an unlabelled transfer
        row counts with its own prediction as its score (validation data is all labelled, so
        ``val_pearson``, which picks the best weights, is exact)."""
        ops = keras.ops
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]
        mask = self._gold_mask(y, sample_weight)
        if self.kind == "regression":
            y = ops.where(ops.reshape(mask, ops.shape(y)) > 0, y,
                          ops.cast(ops.reshape(y_pred, ops.shape(y)), y.dtype))
            return super().compute_metrics(x, y, y_pred, None)
        if self.kind == "classification":
            y = ops.maximum(y, 0)
        return super().compute_metrics(x, y, y_pred, mask)


def layer_outputs(backbone):
    """A ``keras.Model`` on ``backbone``'s inputs (and weights) that returns its outputs and
    ``"hidden"``: the embeddings' output and each Transformer block's, in order
    (``num_layers + 1`` tensors). For kplm ``Encoder`` backbones."""
    blocks = getattr(backbone, "transformer_layers", None)
    embeddings = getattr(backbone, "embeddings_dropout", None)
    if not blocks or embeddings is None:
        raise ValueError(f"{type(backbone).__name__} does not expose its layers' outputs "
                         "(kplm Encoder backbones do)")
    outputs = dict(backbone.output)
    outputs["hidden"] = [embeddings.output] + [block.output for block in blocks]
    return keras.Model(backbone.input, outputs)


def layer_map(student_layers, teacher_layers):
    """``[(student index, teacher index)]`` of layer outputs matched by the hidden-state term,
    index 0 being the embeddings: each student block ``i`` to teacher block
    ``round(i * teacher_layers / student_layers)`` (TinyBERT's uniform mapping), the
    embeddings to the embeddings.

    Example:
    >>> layer_map(2, 6)
    [(0, 0), (1, 3), (2, 6)]
    """
    return [(i, round(i * teacher_layers / student_layers)) for i in range(student_layers + 1)]


def selection_problem(student, teacher, layers):
    """Why ``select_weights`` cannot start ``student`` from ``teacher`` (two ``Encoder``
    configurations as dicts, ``layers`` the teacher blocks to take): ``(config key, reason)``,
    or None when it can. The student's blocks must be as many as ``layers``, its widths no
    larger than the teacher's, its attention heads exactly as wide (a head is kept whole), its
    activation and layer-norm placement the same.

    Example:
    >>> teacher = {"num_layers": 6, "hidden_dim": 384, "num_heads": 12,
    ...            "intermediate_dim": 1536}
    >>> selection_problem({"num_layers": 2, "hidden_dim": 128, "num_heads": 4,
    ...                    "intermediate_dim": 512}, teacher, [0, 5]) is None
    True
    >>> selection_problem({"num_layers": 2, "hidden_dim": 128, "num_heads": 2,
    ...                    "intermediate_dim": 512}, teacher, [0, 5])[1]
    "the student's attention heads are 64 wide, the teacher's 32: set num_heads to 4"
    """
    if len(layers) != student["num_layers"]:
        return ("distillation.select_weights",
                f"lists {len(layers)} teacher blocks for a student of {student['num_layers']}; "
                "give one per student block")
    if layers[-1] >= teacher["num_layers"]:
        return ("distillation.select_weights",
                f"block {layers[-1]} does not exist; the teacher has {teacher['num_layers']} "
                f"(0-{teacher['num_layers'] - 1})")
    for key in ("hidden_dim", "intermediate_dim", "num_heads"):
        if student[key] > teacher[key]:
            return (f"backbone.{key}", f"the student's {key} ({student[key]}) exceeds the "
                    f"teacher's ({teacher[key]}); weight selection keeps part of the teacher's")
    width, teacher_width = (student["hidden_dim"] // student["num_heads"],
                            teacher["hidden_dim"] // teacher["num_heads"])
    if width != teacher_width:
        hint = (f": set num_heads to {student['hidden_dim'] // teacher_width}"
                if student["hidden_dim"] % teacher_width == 0 else "")
        return ("backbone.num_heads", f"the student's attention heads are {width} wide, the "
                f"teacher's {teacher_width}{hint}")
    if (teacher["hidden_dim"] == teacher["intermediate_dim"]
            and student["hidden_dim"] != student["intermediate_dim"]):
        return ("backbone.intermediate_dim", "the teacher's hidden and feed-forward widths are "
                "equal, so its weights do not say which axis is which; give the student equal "
                "ones too")
    for key, default in (("activation", "gelu"), ("normalize_first", False)):
        if student.get(key, default) != teacher.get(key, default):
            return (f"backbone.{key}", f"{student.get(key, default)!r} differs from the "
                    f"teacher's {teacher.get(key, default)!r}; selected weights need the same")
    return None


def select_weights(student, teacher, layers):
    """Initialise ``student`` (a new kplm ``Encoder``) from ``teacher``'s weights by weight
    selection (Xu et al. 2023, "Initializing Models with Larger Ones"): student block ``i``
    from teacher block ``layers[i]``, and every weight (embeddings, their layer norm, the
    blocks, the pooler) cut to the student's shape by keeping evenly spaced hidden units,
    attention heads and feed-forward units, the same ones in every layer, so the residual
    stream keeps one consistent set of the teacher's coordinates; the first rows of the
    position and segment tables. Nothing is rescaled. Raises ``ValueError`` when the shapes
    do not allow it (``selection_problem``).

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> teacher = Encoder(vocabulary_size=50, num_layers=3, hidden_dim=16, num_heads=4,
    ...                   intermediate_dim=32, sequence_length=8)
    >>> student = Encoder(vocabulary_size=50, num_layers=1, hidden_dim=8, num_heads=2,
    ...                   intermediate_dim=16, sequence_length=8)
    >>> select_weights(student, teacher, [2])
    >>> bool((student.token_embedding.embeddings.numpy()
    ...       == teacher.token_embedding.embeddings.numpy()[:, ::2]).all())
    True
    """
    import numpy as np
    configs = [m.get_config() for m in (student, teacher)]
    problem = selection_problem(*configs, list(layers))
    if problem is None and student.vocabulary_size != teacher.vocabulary_size:
        problem = ("vocabulary", f"{student.vocabulary_size} entries against the teacher's "
                   f"{teacher.vocabulary_size}")
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")

    def evenly(teacher_size, student_size):  # every k-th when k = teacher / student is whole
        return np.arange(student_size) * teacher_size // student_size
    kept = {teacher.hidden_dim: evenly(teacher.hidden_dim, student.hidden_dim),
            teacher.intermediate_dim: evenly(teacher.intermediate_dim,
                                             student.intermediate_dim),
            teacher.num_heads: evenly(teacher.num_heads, student.num_heads)}

    def assign(variable, values, first_axis=None):
        values = np.asarray(values)
        for axis, (size, teacher_size) in enumerate(zip(variable.shape, values.shape)):
            if size == teacher_size:
                continue
            index = (np.arange(size) if axis == 0 and first_axis == "first"
                     else kept[teacher_size])
            values = np.take(values, index, axis=axis)
        variable.assign(values.astype(variable.dtype))

    assign(student.token_embedding.embeddings, teacher.token_embedding.embeddings.numpy())
    table = student.position_embedding.position_embeddings
    positions = teacher.position_embedding.position_embeddings.numpy()
    if table.shape[0] <= positions.shape[0]:
        assign(table, positions, "first")
    if student.segment_embedding is not None and teacher.segment_embedding is not None:
        segments = teacher.segment_embedding.embeddings.numpy()
        if student.segment_embedding.embeddings.shape[0] <= segments.shape[0]:
            assign(student.segment_embedding.embeddings, segments, "first")
    pairs = [(student.embeddings_layer_norm, teacher.embeddings_layer_norm),
             (student.pooled_dense, teacher.pooled_dense)]
    pairs += [(student.transformer_layers[i], teacher.transformer_layers[k])
              for i, k in enumerate(layers)]
    if student.final_layer_norm is not None:
        pairs.append((student.final_layer_norm, teacher.final_layer_norm))
    for mine, theirs in pairs:
        for variable, source in zip(mine.weights, theirs.weights, strict=True):
            assign(variable, source.numpy())


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
