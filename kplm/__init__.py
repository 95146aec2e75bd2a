"""kplm: pretrain and fine-tune Transformer language models on TensorFlow + Keras 3.

The public API. Names are imported lazily, so ``import kplm`` stays cheap and TensorFlow is only
imported when a model, a dataset or a training run is asked for.

Example:
    >>> import kplm
    >>> "masked_lm" in kplm.get_registry().names("objective")
    True
"""
import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_LAZY = {
    # plugin core
    "hookimpl": "kplm.hookspecs",
    "get_registry": "kplm.plugins",
    "get_plugin_manager": "kplm.plugins",
    "DataSource": "kplm.components",
    "Objective": "kplm.components",
    "Head": "kplm.components",
    "Tokenizer": "kplm.components",
    "KplmError": "kplm.errors",
    "ConfigError": "kplm.errors",
    "DataError": "kplm.errors",
    # refusing hostile input: declarative limits, bounded quoting, file reads naming the file
    "check_limits": "kplm.checks",
    "shown": "kplm.errors",
    "reading": "kplm.errors",
    # configs and runs
    "load_yaml": "kplm.config",
    "apply_overrides": "kplm.config",
    "TrainerConfig": "kplm.training.trainer_config",
    "pretrain": "kplm.training.pretrain",
    "finetune": "kplm.training.finetune",
    "FinetunedRun": "kplm.runs",
    "load_backbone": "kplm.runs",
    "load_tokenizer": "kplm.runs",
    "load_pretrained": "kplm.pretrained",
    # writing outputs: one rule for every writer (built-in commands and plugins)
    "atomic_output": "kplm.outputs",
    "check_output": "kplm.outputs",
    "OutputError": "kplm.outputs",
    "PretrainedBackbone": "kplm.components",
    # components
    "TextFiles": "kplm.data.text_files",
    "JsonLines": "kplm.data.jsonl",
    "WordPiece": "kplm.tokenizers.wordpiece",
    "MaskedLMObjective": "kplm.objectives.masked_lm",
    "CsvFiles": "kplm.data.csv_files",
    "SequenceClassificationHead": "kplm.heads.sequence_classification",
    "SequenceClassifier": "kplm.models.classifier",
    "SquadFiles": "kplm.data.squad",
    "QuestionAnsweringHead": "kplm.heads.question_answering",
    "SpanExtractor": "kplm.models.span_extractor",
    "ConllFiles": "kplm.data.conll",
    "TokenClassificationHead": "kplm.heads.token_classification",
    "TokenClassifier": "kplm.models.token_classifier",
    "RegressionHead": "kplm.heads.regression",
    "SequenceRegressor": "kplm.models.classifier",
    "Encoder": "kplm.models.encoder",
    "MaskedLM": "kplm.models.masked_lm",
    "Decoder": "kplm.models.decoder",
    "CausalLM": "kplm.models.causal_lm",
    "EncoderDecoder": "kplm.models.encoder_decoder",
    "Seq2SeqLM": "kplm.models.seq2seq_lm",
    "Pretrainer": "kplm.models.pretrainer",
    "kernel_initializer": "kplm.models.initializers",
    "mask_tokens": "kplm.objectives.masking",
    "NextSentencePredictionObjective": "kplm.objectives.next_sentence",
    "SentenceOrderPredictionObjective": "kplm.objectives.next_sentence",
    "CombinedObjective": "kplm.objectives.combined",
    "CausalLMObjective": "kplm.objectives.causal_lm",
    "SpanCorruptionObjective": "kplm.objectives.span_corruption",
    "DenoisingObjective": "kplm.objectives.denoising",
    "SentencePiece": "kplm.tokenizers.sentencepiece",
    "ParallelText": "kplm.data.parallel_text",
    "TFRecordShards": "kplm.data.tfrecord",
    "prepare_data": "kplm.data.prepare",
    "Seq2SeqHead": "kplm.heads.seq2seq",
    "generate": "kplm.generation",
    "build_optimizer": "kplm.training.optimizer",
    "WarmupDecay": "kplm.training.optimizer",
    "TrainingMonitor": "kplm.training.monitor",
    "train": "kplm.training.loop",
    "TrainStep": "kplm.training.step",
    "BestWeights": "kplm.training.best_weights",
    "strategy_for": "kplm.training.distribute",
    "is_chief": "kplm.training.distribute",
    "require_finite": "kplm.finite",
    "NonFiniteWeightsError": "kplm.finite",
    "CheckpointWriteError": "kplm.training.checkpoints",
    "TokenLoss": "kplm.models.token_loss",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kplm' has no attribute {name!r}")


def __dir__():
    return __all__
