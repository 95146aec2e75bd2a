"""The ``regression`` head: a real-valued score for a text or a text pair (STS-B style)."""
import re
from typing import Literal, Optional

from kplm.errors import DataError, shown
from kplm.heads.sequence_classification import SequenceClassificationHead
from kplm.hookspecs import hookimpl
from kplm.models.inference import batch_predictor


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_FLOAT32_MAX = 3.4028234663852886e38


class RegressionHead(SequenceClassificationHead):
    """Predicts a number (e.g. a 0-5 similarity score) from the pooled ``[CLS]`` of a text or a
    ``[CLS] a [SEP] b [SEP]`` pair, trained with mean squared error. Metrics: Pearson and
    Spearman correlation over the whole evaluation set (and MSE).

    Args:
        text_field: str. Field with the (first) text. Defaults to ``"text"``.
        pair_field: str or None. Field with the second text. Defaults to None.
        label_field: str. Field with the score (a number written as text). Defaults to ``"label"``.
        dropout: float. Dropout before the output layer. Defaults to 0.1.
        shuffle_buffer: int. Examples held for shuffling. Defaults to 10000.
        pooling: str. ``"pooler"``, ``"cls"`` or ``"mean"``, as for ``sequence_classification``.
            Defaults to ``"pooler"``.
        initial_score: float or None. The output's value before training (its bias); None: the
            mean training score. Defaults to None.

    Example:
    >>> RegressionHead(pair_field="text_pair").postprocess([[3.25]])
    [{'score': 3.25}]
    """

    metric = "pearson"
    metric_mode = "max"
    distillation = "regression"
    unlabelled = "nan"  # read as NaN: no gold score

    def __init__(self, text_field: str = "text", pair_field: Optional[str] = None,
                 label_field: str = "label", dropout: float = 0.1, shuffle_buffer: int = 10000,
                 pooling: Literal["pooler", "cls", "mean"] = "pooler",
                 initial_score: Optional[float] = None):
        super().__init__(labels=None, text_field=text_field, pair_field=pair_field,
                         label_field=label_field, dropout=dropout, shuffle_buffer=shuffle_buffer,
                         pooling=pooling)
        self.initial_score = initial_score

    def get_config(self):
        config = super().get_config()
        config.pop("labels")
        config["initial_score"] = self.initial_score
        return config

    def prepare(self, source):
        """Every label must be a finite number, and not all the same (a correlation with a
        constant is undefined: a test split whose labels are placeholders, say). The first
        source prepared (the training data) sets ``initial_score``, the output's starting value,
        to its mean unless it was given."""
        import math
        total = count = 0
        seen = set()
        for place, example in source.located():
            self.require_fields(example, "label_field", "text_field", "pair_field")
            raw = example[self.label_field].decode("utf-8")
            # as the training graph parses it (tf.strings.to_number): ASCII digits only, no
            # "1_0" or Arabic-Indic digits that Python's float() would take
            value = float(raw) if _NUMBER.fullmatch(raw.strip()) else math.nan
            if not math.isfinite(value):
                hint = (" (a header line? set header: true)" if place.endswith(":1")
                        and getattr(source, "header", None) is False else "")
                raise DataError(f"{place}: label {shown(raw)} is not a number{hint}")
            if abs(value) > _FLOAT32_MAX:
                raise DataError(f"{place}: label {shown(raw)} is out of float32's range "
                                "(about 3.4e38)")
            total, count = total + value, count + 1
            if len(seen) < 2:
                seen.add(value)
        if count > 1 and len(seen) == 1:
            raise DataError(f"every one of the {count:,} labels is {seen.pop():g}: nothing to "
                            "correlate with (a split whose labels are placeholders?)")
        if self.initial_score is None and count:
            self.initial_score = total / count

    def _label_encoder(self):
        import tensorflow as tf
        return lambda labels: tf.strings.to_number(labels, tf.float32)[:, None]

    def build_model(self, backbone):
        from kplm.models.classifier import SequenceRegressor
        return SequenceRegressor(backbone, dropout=self.dropout, pooling=self.pooling,
                                 output_bias=self.initial_score or 0.0)

    def _scores(self, model, source, tokenizer, batch_size, sequence_length):
        import numpy as np
        gold, predicted, predict = [], [], batch_predictor(model)
        for x, y in self.batches(source.build(), tokenizer, batch_size=batch_size,
                                 sequence_length=sequence_length):
            predicted.append(np.asarray(predict(x)).reshape(-1))
            gold.append(np.asarray(y).reshape(-1))
        return np.concatenate(gold), np.concatenate(predicted)

    def evaluate(self, model, source, tokenizer, *, batch_size, sequence_length):
        from kplm.metrics import regression_metrics
        self.prepare(source)
        return regression_metrics(*self._scores(model, source, tokenizer, batch_size,
                                                sequence_length))

    def serving_endpoint(self, model, tokenizer, sequence_length):
        """``(fn, input signature)``: raw text (and its pair) -> ``score`` ``[batch]``."""
        import tensorflow as tf
        signature, inputs = self._serving_inputs(tokenizer, sequence_length)

        def serve(*texts):
            outputs = tf.cast(model(inputs(*texts), training=False), tf.float32)
            return {"score": tf.reshape(outputs, [-1])}
        return serve, signature

    def postprocess(self, outputs):
        import numpy as np
        return [{"score": round(float(v), 6)} for v in np.asarray(outputs).reshape(-1)]

    def baseline(self, train_source, eval_source):
        """Predicting the training mean: its mean squared error (correlations are undefined)."""
        import numpy as np
        field = self.label_field
        mean = np.mean([float(ex[field]) for ex in train_source.build().as_numpy_iterator()])
        gold = np.array([float(ex[field]) for ex in eval_source.build().as_numpy_iterator()])
        return {"predict_mean": float(mean), "mse": float(np.mean((gold - mean) ** 2))}


@hookimpl
def register_heads(register):
    register("regression", RegressionHead)
