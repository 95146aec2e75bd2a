"""The ``finetune:`` section of a fine-tuning config (no TensorFlow needed to check it)."""
from typing import Optional


class FinetuneOptions:
    """The ``finetune:`` section.

    Args:
        freeze_backbone: bool. Train the head only. Defaults to False.
        backbone_learning_rate_scale: float. The backbone's learning rate as a share of the
            head's (1.0: the same). Defaults to 1.0.
        early_stopping_patience: int or None. Stop after this many evaluations without a better
            validation metric; the best weights are kept either way. Defaults to None.
        sequence_length: int or None. Token length of the inputs; None: the backbone's.
        length_bucketing: bool. Group training and validation rows by length and pad each
            batch only to its bucket (a multiple of ``bucket_width``), for heads that allow it
            (classification, pairs, regression, token classification): see
            ``kplm.data.bucketing``. Defaults to True.
        bucket_width: int. Bucket lengths are multiples of it. Defaults to 16.
        lora_rank: int or None. Parameter-efficient fine-tuning: freeze the pretrained backbone
            and train rank-``lora_rank`` LoRA factors on its attention query and value
            projections (Keras' own LoRA, through keras_hub's ``Backbone.enable_lora``), plus
            the head. The run saves only those (``adapters.safetensors``); loading it reads
            the backbone from the checkpoint it started from, and ``kplm export`` merges them
            into the weights. See ``kplm.models.lora``. Defaults to None (full fine-tuning).
        lora_alpha: float or None. The factors' scale is ``lora_alpha / lora_rank``. Defaults
            to None: ``lora_rank`` (scale 1).
        lora_targets: list of str or None. The names of the backbone's projection layers
            (``Dense`` / ``EinsumDense``) that get LoRA factors, in every block: in kplm's and
            keras_hub's encoders and decoders ``query``, ``key``, ``value``,
            ``attention_output``, ``feedforward_intermediate_dense``,
            ``feedforward_output_dense``. A name no layer has is refused, listing the names
            there are. Defaults to None: the query and value projections (Hu et al. 2021).
    """

    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"backbone_learning_rate_scale": "[0, 1]", "early_stopping_patience": ">= 1",
              "sequence_length": ">= 2", "bucket_width": ">= 1", "lora_rank": ">= 1",
              "lora_alpha": "> 0"}

    def __init__(self, freeze_backbone: bool = False, backbone_learning_rate_scale: float = 1.0,
                 early_stopping_patience: Optional[int] = None,
                 sequence_length: Optional[int] = None, length_bucketing: bool = True,
                 bucket_width: int = 16, lora_rank: Optional[int] = None,
                 lora_alpha: Optional[float] = None,
                 lora_targets: Optional[list[str]] = None):
        from kplm.checks import check_limits
        from kplm.errors import ConfigError
        check_limits(self.limits, locals(), "finetune")
        if lora_alpha is not None and lora_rank is None:
            raise ConfigError("config key 'finetune.lora_alpha': scales LoRA factors; set "
                              "finetune.lora_rank too")
        if lora_targets is not None and lora_rank is None:
            raise ConfigError("config key 'finetune.lora_targets': names the layers LoRA "
                              "adapts; set finetune.lora_rank too")
        if lora_targets is not None and (not lora_targets or not all(
                isinstance(t, str) and t for t in lora_targets)):
            raise ConfigError("config key 'finetune.lora_targets': expected a non-empty list "
                              f"of layer names, got {lora_targets!r}")
        if lora_rank is not None and freeze_backbone:
            raise ConfigError("config key 'finetune.freeze_backbone': LoRA (finetune.lora_rank) "
                              "already freezes the backbone and trains its adapters; remove "
                              "one of them")
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        self.lora_targets = list(lora_targets) if lora_targets is not None else None
        self.freeze_backbone = freeze_backbone
        self.backbone_learning_rate_scale = backbone_learning_rate_scale
        self.early_stopping_patience = early_stopping_patience
        self.sequence_length = sequence_length
        self.length_bucketing, self.bucket_width = length_bucketing, bucket_width
