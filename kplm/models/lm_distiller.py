"""Task-agnostic knowledge distillation of a masked language model (DistilBERT, Sanh et al.
2019): a student ``MaskedLM`` trained on its own masked-LM loss, the teacher's softened
predictions at the masked positions, and the direction of the teacher's hidden states."""
import keras

from kplm.models.distiller import _Frozen, softened_kl


class MaskedLMDistiller(keras.Model):
    """Trains ``student`` (a kplm ``MaskedLM``) against ``teacher_backbone`` (and, for the soft
    term, ``teacher_head``, the teacher's ``MaskedLMHead``) on the same masked rows. Three loss
    terms, each a mean over this batch's own targets:

    * ``masked_lm``: the student's cross-entropy on the original tokens at the masked positions;
    * ``soft``: the KL divergence from the teacher's to the student's distribution over the
      vocabulary at those positions, both softened at ``temperature``, times ``temperature**2``;
    * ``cosine``: ``1 - cos`` between the student's and the teacher's last hidden states, over
      the real (unpadded) tokens.

    Calling it returns ``{"logits", "hidden"}`` of the student; the teacher runs in inference
    mode and is never trained, checkpointed nor saved (the run saves the student's backbone).
    With ``masked_lm_weight`` and ``soft_weight`` both 0 (hidden states only) the student's
    masked-LM head is not computed at all (no logits, no masked-token metrics): the vocabulary
    projection would cost a fifth of the step for nothing.

    Args:
        student: a kplm ``MaskedLM``.
        teacher_backbone: an encoder with the student's vocabulary (and, with a cosine weight,
            its width).
        teacher_head: the teacher's ``MaskedLMHead`` or None (then ``soft_weight`` must be 0).
        temperature: float. Defaults to 2.0.
        masked_lm_weight, soft_weight, cosine_weight: floats. DistilBERT's 2, 5, 1 by default.

    Example:
    >>> from kplm.models.encoder import Encoder
    >>> from kplm.models.masked_lm import MaskedLM
    >>> def encoder(layers):
    ...     return Encoder(vocabulary_size=50, num_layers=layers, hidden_dim=16, num_heads=2,
    ...                    intermediate_dim=32, sequence_length=8)
    >>> teacher = MaskedLM(encoder(2))
    >>> distiller = MaskedLMDistiller(MaskedLM(encoder(1)), teacher.backbone,
    ...                               teacher.masked_lm_head)
    >>> distiller.compile(optimizer="adam")
    """

    def __init__(self, student, teacher_backbone, teacher_head=None, temperature=2.0,
                 masked_lm_weight=2.0, soft_weight=5.0, cosine_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        if soft_weight and teacher_head is None:
            raise ValueError("a soft term needs the teacher's masked-LM head")
        self.student = student
        teacher_backbone.trainable = False
        self._teacher = _Frozen((teacher_backbone, teacher_head))
        self.temperature = float(temperature)
        self.weights_of = {"masked_lm": float(masked_lm_weight), "soft": float(soft_weight),
                           "cosine": float(cosine_weight)}

    def call(self, inputs, training=False):
        student = self.student
        features = {k: v for k, v in inputs.items() if k != "mask_positions"}
        hidden = student.backbone(features, training=training)["sequence_output"]
        if not self.uses_head:
            return {"hidden": hidden}
        logits = student.masked_lm_head(hidden, inputs["mask_positions"])
        return {"logits": keras.ops.cast(logits, "float32"), "hidden": hidden}

    @property
    def uses_head(self):
        """Whether a loss term reads the student's masked-LM predictions."""
        return bool(self.weights_of["masked_lm"] or self.weights_of["soft"])

    def compile(self, optimizer="auto", **kwargs):
        from kplm.models.token_loss import compile_defaults, token_loss
        optimizer, _, metrics = compile_defaults(optimizer)
        self.token_loss = token_loss()
        kwargs.pop("loss", None)
        keras.Model.compile(self, optimizer=optimizer,
                            weighted_metrics=metrics if self.uses_head else None, **kwargs)

    def loss_terms(self, x, y, y_pred, sample_weight):
        from kplm.models.token_loss import weighted_mean
        ops = keras.ops
        logits, hidden = y_pred.get("logits"), y_pred["hidden"]
        weight = ops.cast(sample_weight, "float32")
        terms = {}
        if self.weights_of["masked_lm"]:
            terms["masked_lm"] = (self.weights_of["masked_lm"],
                                  weighted_mean(self.token_loss, y, logits, weight))
        backbone, head = self._teacher.model
        features = {k: v for k, v in x.items() if k != "mask_positions"}
        teacher_hidden = ops.stop_gradient(
            backbone(features, training=False)["sequence_output"])
        if self.weights_of["soft"]:
            teacher_logits = ops.stop_gradient(head(teacher_hidden, x["mask_positions"]))
            kl = softened_kl(teacher_logits, logits, self.temperature)
            terms["soft"] = (self.weights_of["soft"],
                             ops.divide_no_nan(ops.sum(kl * weight), ops.sum(weight)))
        if self.weights_of["cosine"]:
            a = ops.cast(hidden, "float32")
            b = ops.cast(teacher_hidden, "float32")
            cos = ops.sum(a * b, -1) / ops.maximum(
                ops.sqrt(ops.sum(a * a, -1) * ops.sum(b * b, -1)), 1e-6)
            real = ops.cast(x["padding_mask"], "float32")
            terms["cosine"] = (self.weights_of["cosine"],
                               ops.divide_no_nan(ops.sum((1.0 - cos) * real), ops.sum(real)))
        return terms

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if not self.uses_head:
            return super().compute_metrics(x, y, y, sample_weight)  # no compiled metrics
        return super().compute_metrics(x, y, y_pred["logits"], sample_weight)
