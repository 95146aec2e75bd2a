"""Regression head: correlations by hand, and a sentence-pair model that learns STS scores."""
import os

import numpy as np
import pytest

from kplm.metrics import regression_metrics

from conftest import ROOT

STS_TRAIN = os.path.join(ROOT, "data", "stsb", "train.tsv")
STS_DEV = os.path.join(ROOT, "data", "stsb", "dev.tsv")


def test_pearson_and_spearman_by_hand():
    m = regression_metrics([1, 2, 3, 4], [1, 3, 2, 4])
    # Pearson: deviations (-1.5,-.5,.5,1.5) both, cross sum 2.25+(-.25)+(-.25)+2.25=4, norms 5
    assert m["pearson"] == pytest.approx(4 / 5)
    assert m["spearman"] == pytest.approx(0.8)  # ranks equal the values here
    assert m["mse"] == pytest.approx(0.5)
    ties = regression_metrics([1, 2, 2, 3], [10, 20, 30, 40])
    # gold ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): cov 4.5 / sqrt(4.5 * 5)
    assert ties["spearman"] == pytest.approx(4.5 / np.sqrt(4.5 * 5))


@pytest.mark.slow
def test_sentence_pair_regression_learns_similarity(tmp_path):
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    columns = {"text": "sentence1", "text_pair": "sentence2", "label": "score"}
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary_size": 1500},
        "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 64,
                     "intermediate_dim": 128, "sequence_length": 64, "dropout": 0.1},
        "data": {"train": {"name": "csv", "paths": [STS_TRAIN], "columns": columns},
                 "validation": {"name": "csv", "paths": [STS_DEV], "columns": columns}},
        "head": {"name": "regression", "pair_field": "text_pair"},
        "trainer": {"steps": 400, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 20,
                    "eval_every": 400, "log_every": 50},
    }
    metrics = finetune(config, echo=None, progress=False)
    assert metrics["train_steps"] == 400
    assert np.isfinite(metrics["validation"]["pearson"]) and metrics["validation"]["pearson"] > 0
    # From random initialisation 800 pairs are too few to generalise much, but the model must
    # fit its training pairs far better than predicting the mean score.
    run = FinetunedRun(config["run_dir"])
    fitted = run.evaluate(run.source([STS_TRAIN], split="train"))
    baseline_mse = run.head.baseline(run.source([STS_TRAIN], split="train"),
                                     run.source([STS_TRAIN], split="train"))["mse"]
    assert fitted["mse"] < 0.8 * baseline_mse and fitted["pearson"] > 0.5, (fitted, baseline_mse)
    # a split whose scores are placeholders (GLUE's test files: -1 everywhere) is refused,
    # not scored with a correlation of 0
    placeholder = tmp_path / "test.tsv"
    placeholder.write_text("sentence1\tsentence2\tscore\na\tb\t-1\nc\td\t-1\n")
    from kplm.errors import DataError
    with pytest.raises(DataError, match=rf"--data \({placeholder}\): every one of the 2 labels "
                       r"is -1: nothing to correlate with"):
        run.evaluate(run.source([str(placeholder)]))
    (prediction,) = run.predict([{"text": "A dog runs.", "text_pair": "A dog is running."}])
    assert isinstance(prediction["score"], float)
    # the exported SavedModel takes the raw sentence pairs and scores them as predict does
    from kplm.serving import export_saved_model
    from kplm.testing import serve_in_fresh_process
    exported = str(tmp_path / "served")
    assert export_saved_model(config["run_dir"], exported, echo=None) == ["text", "text_pair"]
    pairs = [("A dog runs.", "A dog is running."), ("A man cooks.", "A plane lands."), ("", "x")]
    served = serve_in_fresh_process(exported, {"text": [a for a, _ in pairs],
                                               "text_pair": [b for _, b in pairs]})
    expected = run.predict([{"text": a, "text_pair": b} for a, b in pairs])
    # float32 scores of a few units from two graphs in two processes: relative last-bit
    # differences (~1e-6), so a relative tolerance beside the absolute one.
    np.testing.assert_allclose(served["score"], [p["score"] for p in expected], rtol=1e-5,
                               atol=1e-5)
