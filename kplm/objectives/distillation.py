"""The ``distillation`` pretraining objective: DistilBERT-style task-agnostic distillation."""
from typing import Literal, Optional

from kplm.checks import check_limits
from kplm.errors import ConfigError
from kplm.hookspecs import hookimpl
from kplm.objectives.masked_lm import MaskedLMObjective


class DistillationObjective(MaskedLMObjective):
    """Masked-LM pretraining of a student that also learns from a teacher on the same masked
    rows (Sanh et al. 2019): the student's masked-LM loss, the cross-entropy to the teacher's
    softened predictions at the masked positions and the cosine alignment of the last hidden
    states (``kplm.models.lm_distiller.MaskedLMDistiller``). Data, masking and metrics are the
    ``masked_lm`` objective's.

    The student is the run's backbone; it reads the teacher's token ids, so it takes the
    teacher's tokenizer: initialise it from the teacher itself, with fewer layers
    (``backbone: {name: hf, path: TEACHER, keep_layers: [0, 2, 4]}``), as DistilBERT does. A
    cosine term needs the two widths to agree; the soft term needs a teacher checkpoint with a
    masked-LM head (``BertForMaskedLM`` and the like; a sentence-transformers ``BertModel``
    such as all-MiniLM-L6-v2 has none: set ``soft_weight: 0``).

    Args:
        teacher: str. The teacher: a Hugging Face directory, keras-hub preset or kplm
            pretraining run (read locally, never downloaded).
        temperature: float. Softmax temperature of the soft term. Defaults to 2.0.
        masked_lm_weight: float. Defaults to 2.0 (DistilBERT's).
        soft_weight: float. Defaults to 5.0 (DistilBERT's).
        cosine_weight: float. Defaults to 1.0 (DistilBERT's).
        mask_rate, mask_token_rate, random_token_rate, whole_word, max_predictions, packing,
        shuffle_buffer: as for ``masked_lm``.

    Example:
    >>> objective = DistillationObjective(teacher="models/all-MiniLM-L6-v2", soft_weight=0)
    >>> objective.max_predictions_for(128)
    20
    """

    output_name = None  # not combinable: the whole model is the student + its teacher
    limits = {**MaskedLMObjective.limits, "temperature": "> 0", "masked_lm_weight": ">= 0",
              "soft_weight": ">= 0", "cosine_weight": ">= 0"}

    def __init__(self, teacher: str, temperature: float = 2.0, masked_lm_weight: float = 2.0,
                 soft_weight: float = 5.0, cosine_weight: float = 1.0, mask_rate: float = 0.15,
                 mask_token_rate: float = 0.8, random_token_rate: float = 0.1,
                 whole_word: bool = False, max_predictions: Optional[int] = None,
                 packing: Literal["pack", "pad"] = "pack", shuffle_buffer: int = 10000):
        check_limits(self.limits, locals(), "objective")
        if masked_lm_weight + soft_weight + cosine_weight <= 0:
            raise ConfigError("objective: at least one of masked_lm_weight, soft_weight and "
                              "cosine_weight must be > 0")
        super().__init__(mask_rate=mask_rate, mask_token_rate=mask_token_rate,
                         random_token_rate=random_token_rate, whole_word=whole_word,
                         max_predictions=max_predictions, packing=packing,
                         shuffle_buffer=shuffle_buffer)
        self.teacher, self.temperature = teacher, temperature
        self.masked_lm_weight, self.soft_weight = masked_lm_weight, soft_weight
        self.cosine_weight = cosine_weight

    def check(self):
        """The teacher is a checkpoint kplm reads (its files, not its weights)."""
        from kplm.pretrained import check_checkpoint
        check_checkpoint(self.teacher, "objective.teacher")

    def load_teacher(self):
        """``(backbone, masked-LM head or None, tokenizer)`` of the teacher."""
        from kplm.models.masked_lm import MaskedLM
        from kplm.pretrained import checkpoint_format, load_pretrained
        backbone, tokenizer = load_pretrained(self.teacher, key="objective.teacher")
        if not hasattr(backbone, "token_embedding"):
            raise ConfigError(f"config key 'objective.teacher': {self.teacher} is not an "
                              "encoder; the distillation objective distils masked-LM encoders")
        head = None
        if self.soft_weight:
            teacher = MaskedLM(backbone)
            note = None
            if checkpoint_format(self.teacher, "objective.teacher") == "hf":
                from kplm.pretrained import huggingface
                note = huggingface.initialize_masked_lm_head(self.teacher, teacher)
            if not note or "new" in note:
                raise ConfigError(f"config key 'objective.soft_weight': the teacher "
                                  f"{self.teacher} has no masked-LM head to learn from; set "
                                  "objective.soft_weight: 0 (hidden states and the student's "
                                  "own masked-LM loss only)")
            head = teacher.masked_lm_head
        return backbone, head, tokenizer

    def build_model(self, backbone):
        """The student's ``MaskedLM`` inside a ``MaskedLMDistiller`` with the teacher."""
        from kplm.models.lm_distiller import MaskedLMDistiller
        from kplm.models.masked_lm import MaskedLM
        teacher, head, tokenizer = self.load_teacher()
        if teacher.vocabulary_size != backbone.vocabulary_size:
            raise ConfigError(f"config key 'objective.teacher': the teacher's vocabulary "
                              f"({teacher.vocabulary_size:,}) is not the student's "
                              f"({backbone.vocabulary_size:,}); initialise the student from "
                              "the teacher (backbone: {name: hf, path: TEACHER, keep_layers: "
                              "[...]})")
        self.teacher_tokens = list(tokenizer.tokens)
        if self.cosine_weight and teacher.hidden_dim != backbone.hidden_dim:
            raise ConfigError(f"config key 'objective.cosine_weight': the teacher's hidden "
                              f"states ({teacher.hidden_dim}) and the student's "
                              f"({backbone.hidden_dim}) differ in width; set "
                              "objective.cosine_weight: 0")
        return MaskedLMDistiller(MaskedLM(backbone), teacher, head,
                                 temperature=self.temperature,
                                 masked_lm_weight=self.masked_lm_weight,
                                 soft_weight=self.soft_weight, cosine_weight=self.cosine_weight)

    def dataset(self, source_ds, tokenizer, **options):
        teacher_tokens = getattr(self, "teacher_tokens", None)
        if teacher_tokens is not None and list(tokenizer.tokens) != teacher_tokens:
            raise ConfigError(f"config key 'objective.teacher': the student's tokenizer is not "
                              f"the teacher's ({self.teacher}); initialise the student from "
                              "the teacher")
        return super().dataset(source_ds, tokenizer, **options)


@hookimpl
def register_objectives(register):
    register("distillation", DistillationObjective)
