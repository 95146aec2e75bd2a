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
    """

    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``), and by ``__init__``.
    limits = {"backbone_learning_rate_scale": "[0, 1]", "early_stopping_patience": ">= 1",
              "sequence_length": ">= 2", "bucket_width": ">= 1"}

    def __init__(self, freeze_backbone: bool = False, backbone_learning_rate_scale: float = 1.0,
                 early_stopping_patience: Optional[int] = None,
                 sequence_length: Optional[int] = None, length_bucketing: bool = True,
                 bucket_width: int = 16):
        from kplm.checks import check_limits
        check_limits(self.limits, locals(), "finetune")
        self.freeze_backbone = freeze_backbone
        self.backbone_learning_rate_scale = backbone_learning_rate_scale
        self.early_stopping_patience = early_stopping_patience
        self.sequence_length = sequence_length
        self.length_bucketing, self.bucket_width = length_bucketing, bucket_width
