"""Sequence classification: metrics by hand, the CSV source, fine-tuning, evaluate and predict."""
import json
import os
import shutil

import numpy as np
import pytest

from kplm.data.csv_files import CsvFiles
from kplm.errors import DataError
from kplm.metrics import classification_metrics

from conftest import ROOT, near_ties, run_kplm

SST_TRAIN = os.path.join(ROOT, "data", "sst2", "train.tsv")
SST_DEV = os.path.join(ROOT, "data", "sst2", "dev.tsv")


def test_metrics_match_hand_computed_values():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(labels, preds, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: c0 2*2/(2+3)=0.8, c1 2*1/(2+2)=0.5, c2 2*1/(2+1)=2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # Gorodkin R_K: c=4, s=6, p=(2,2,2), t=(3,2,1): (4*6-12)/sqrt((36-14)*(36-12))
    assert m["matthews_correlation"] == pytest.approx(12 / np.sqrt(22 * 24))
    binary = classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], 2)
    # tp=1 tn=2 fp=0 fn=1: (1*2-0)/sqrt(1*2*3*2)
    assert binary["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))


def test_csv_source_columns_and_errors(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('label,text\npos,"good, really"\nneg,bad\n')
    rows = [(x["text"].numpy(), x["label"].numpy())
            for x in CsvFiles(paths=[str(path)], columns={"text": "text", "label": "label"}).build()]
    assert rows == [(b"good, really", b"pos"), (b"bad", b"neg")]
    numbered = tmp_path / "b.tsv"
    numbered.write_text("1\tfirst\n0\tsecond\n0\n")
    source = CsvFiles(paths=[str(numbered)], columns={"text": 1, "label": 0}, header=False)
    with pytest.raises(DataError, match=rf"{numbered}:3: expected at least 2 columns, found 1"):
        source.check()
    with pytest.raises(DataError, match=rf"{path}:1: no column 'sentence'"):
        CsvFiles(paths=[str(path)], columns={"text": "sentence"}).check()
    # a tab inside a sentence (or one missing) would shift the columns: refused, not read as
    # a third label
    shifted = tmp_path / "c.tsv"
    shifted.write_text("sentence\tlabel\ngood\t1\na stray\ttab inside\t1\n")
    with pytest.raises(DataError, match=rf"{shifted}:3: 3 columns where the header has 2: a "
                       r"delimiter too many or too few in this row \(delimiter '\\t'\)"):
        CsvFiles(paths=[str(shifted)], columns={"text": "sentence", "label": "label"}).check()
    trailing = tmp_path / "e.tsv"  # a trailing delimiter moves no column
    trailing.write_text("sentence\tlabel\t\ngood\t1\nbad\t0\t\n")
    assert [r for _, _, r in CsvFiles(paths=[str(trailing)], columns={
        "text": "sentence", "label": "label"}).records()] == [
        {"text": "good", "label": "1"}, {"text": "bad", "label": "0"}]
    blank = tmp_path / "f.tsv"
    blank.write_text("\nsentence\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match=rf"{blank}:1: an empty header line"):
        CsvFiles(paths=[str(blank)], columns={"text": 0, "label": 1}).check()
    spaced = tmp_path / "d.txt"  # "label sentence" split on spaces: rows of many widths
    spaced.write_text("\n1 a fine film\n0 dull\n")
    with pytest.raises(DataError, match=rf"{spaced}:3: 2 columns where line 2 has 4"):
        CsvFiles(paths=[str(spaced)], columns={"text": 1, "label": 0}, header=False,
                 delimiter=" ").check()


@pytest.fixture(scope="session")
def finetuned_run(tmp_path_factory):
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path_factory.mktemp("sst2") / "run")
    config = {
        "run_dir": run_dir, "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary_size": 3000},
        "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 64,
                     "intermediate_dim": 128, "sequence_length": 48, "dropout": 0.1},
        "data": {"train": {"name": "csv", "paths": [SST_TRAIN],
                           "columns": {"text": "sentence", "label": "label"}},
                 "validation": {"name": "csv", "paths": [SST_DEV],
                                "columns": {"text": "sentence", "label": "label"}}},
        # mean pooling: from random initialisation the tanh pooler over [CLS] can sit on the
        # 0.693 plateau for all 300 steps, depending on the batch order (measured with length
        # bucketing: seed 0 stuck at the majority class, seeds 1 and 2 at 0.736); the mean over
        # real tokens learned on every order tried (0.751 on seed 0)
        "head": {"name": "sequence_classification", "pooling": "mean"},
        "trainer": {"steps": 300, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 30,
                    "eval_every": 100, "log_every": 50},
    }
    metrics = finetune(config, echo=None, progress=False)
    return run_dir, metrics


def test_classifier_beats_majority_baseline(finetuned_run):
    run_dir, metrics = finetuned_run
    majority = metrics["baseline"]["accuracy"]
    assert 0.45 < majority < 0.55
    assert metrics["validation"]["accuracy"] > majority + 0.1, metrics
    assert -1 <= metrics["validation"]["matthews_correlation"] <= 1
    head = json.load(open(os.path.join(run_dir, "head.json")))
    assert head["labels"] == ["negative", "positive"]


def test_evaluate_and_predict_from_a_copied_run_dir(finetuned_run, tmp_path):
    run_dir, metrics = finetuned_run
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)  # a run directory is portable
    result = run_kplm("evaluate", str(moved), "--data", SST_DEV)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    # Accuracy counts argmaxes, computed here in batches of 32 during the run and by `kplm
    # evaluate` in batches of 64 in another process: logits that may differ in the last bits,
    # so each dev sentence at a near tie may flip (1/n). Exact when there is none.
    from kplm.runs import FinetunedRun
    run = FinetunedRun(run_dir)
    rows = list(run.source([SST_DEV]).build())
    dev = [{"text": x["text"].numpy().decode()} for x in rows]
    predicted = run.predict(dev)
    flippable = sum(near_ties(predicted))
    assert evaluated["accuracy"] == pytest.approx(metrics["validation"]["accuracy"],
                                                  abs=flippable / len(dev) + 1e-6)
    # predict (its own input path: rows sorted by length, outputs put back in input order)
    # agrees with evaluate row for row, up to the same near ties.
    gold = [x["label"].numpy().decode() for x in rows]
    correct = sum(p["label"] == g for p, g in zip(predicted, gold))
    assert correct / len(dev) == pytest.approx(evaluated["accuracy"],
                                               abs=flippable / len(dev) + 1e-6)
    inputs = tmp_path / "in.txt"
    inputs.write_text("a gorgeous , witty , seductive movie .\n\nthe worst film of the year .\n")
    out = tmp_path / "pred.jsonl"
    result = run_kplm("predict", str(moved), "-i", str(inputs), "-o", str(out))
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["text"] for p in predictions] == ["a gorgeous , witty , seductive movie .",
                                                "the worst film of the year ."]
    for p in predictions:
        assert p["label"] in ("negative", "positive")
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_finetune_refuses_unknown_head_and_bad_init_from(tmp_path):
    from kplm.errors import ConfigError
    from kplm.training.finetune import FinetuneSpec
    base = {"run_dir": str(tmp_path / "r"),
            "data": {"train": {"name": "csv", "paths": [SST_TRAIN]}}}
    with pytest.raises(ConfigError, match="Did you mean 'sequence_classification'"):
        FinetuneSpec({**base, "head": {"name": "sequence_clasification"}})
    with pytest.raises(ConfigError, match="init_from.* is not a kplm pretraining run directory"):
        FinetuneSpec({**base, "head": {"name": "sequence_classification"},
                      "init_from": str(tmp_path)})


def test_exported_saved_model_serves_raw_text_like_predict(finetuned_run, tmp_path):
    """`kplm export` -> a SavedModel that a process with only TensorFlow + tensorflow-text loads
    and that answers raw strings exactly as `kplm predict` does."""
    from kplm.testing import serve_in_fresh_process
    from kplm.runs import FinetunedRun
    run_dir, _ = finetuned_run
    exported = str(tmp_path / "served")
    result = run_kplm("export", run_dir, "-o", exported)
    assert result.returncode == 0, result.stderr
    assert "serving_default(text)" in result.stdout
    texts = [line.split("\t", 1)[1].rstrip("\n")
             for line in open(SST_DEV, encoding="utf-8").readlines()[1:25]]
    texts += ["", "Ünïcödé — 東京 🎬 !!", "a " * 200]  # empty, non-ASCII, longer than the model
    served = serve_in_fresh_process(exported, {"text": texts})
    expected = FinetunedRun(run_dir).predict([{"text": t} for t in texts])
    decided = [not tie for tie in near_ties(expected)]  # near ties: either label is right
    assert [s for s, d in zip(served["label"], decided) if d] == \
        [p["label"] for p, d in zip(expected, decided) if d]
    assert sum(decided) > len(texts) - 3  # ties are rare: the labels are compared
    np.testing.assert_allclose(
        served["probabilities"],
        [[p["probabilities"][label] for label in ("negative", "positive")] for p in expected],
        atol=1e-5)
    assert served["labels"][0] == ["negative", "positive"]
    assert len(set(served["label"])) == 2  # both labels occur: the comparison is not trivial


def test_pooling_choices_and_regression_starting_score():
    """``pooling: mean`` classifies the mean hidden state over real tokens (padding excluded),
    ``cls`` the first one; a regression head starts its output at the mean training score."""
    from kplm.data.csv_files import CsvFiles
    from kplm.heads.regression import RegressionHead
    from kplm.models.classifier import SequenceClassifier
    from kplm.models.encoder import Encoder
    encoder = Encoder(vocabulary_size=30, num_layers=1, hidden_dim=8, num_heads=2,
                      intermediate_dim=16, sequence_length=6, dropout=0.0)
    x = {"token_ids": np.array([[2, 7, 9, 3, 0, 0]]), "segment_ids": np.zeros((1, 6), "int32"),
         "padding_mask": np.array([[1, 1, 1, 1, 0, 0]])}
    sequence = np.asarray(encoder(x)["sequence_output"])[0]
    for pooling, vector in (("mean", sequence[:4].mean(axis=0)), ("cls", sequence[0])):
        model = SequenceClassifier(encoder, num_classes=2, dropout=0.0, pooling=pooling)
        kernel, bias = (w.numpy() for w in model.output_dense.weights)
        np.testing.assert_allclose(model(x)[0], vector @ kernel + bias, atol=1e-5)
    stsb = os.path.join(ROOT, "data", "stsb", "train.tsv")
    head = RegressionHead(pair_field="text_pair")
    head.prepare(CsvFiles(paths=[stsb], columns={"text": "sentence1", "text_pair": "sentence2",
                                                 "label": "score"}))
    scores = [float(line.split("\t")[-1]) for line in open(stsb).read().splitlines()[1:]]
    assert head.initial_score == pytest.approx(np.mean(scores))
    model = head.build_model(encoder)
    assert model.output_dense.weights[1].numpy()[0] == pytest.approx(np.mean(scores))


def test_a_label_seen_once_on_line_one_is_a_label_where_no_header_is_in_doubt(tmp_path):
    """A rare intent first in a JSONL file (no header there), or in a CSV read with its
    header, is a label like any other; only a csv source read with ``header: false`` refuses
    it (kplm.heads.sequence_classification._refuse_header_label)."""
    from kplm.data.csv_files import CsvFiles
    from kplm.data.jsonl import JsonLines
    from kplm.heads.sequence_classification import SequenceClassificationHead
    from kplm.errors import DataError
    jsonl = tmp_path / "intents.jsonl"
    jsonl.write_text('{"text": "fly me to rome", "label": "book_flight"}\n' + "".join(
        f'{{"text": "t{i}", "label": "{["weather", "play_music"][i % 2]}"}}\n'
        for i in range(12)))
    labels = SequenceClassificationHead().prepare(JsonLines(paths=[str(jsonl)], fields={
        "text": "text", "label": "label"}))
    assert labels == ["book_flight", "play_music", "weather"]
    tsv = tmp_path / "emotions.tsv"
    tsv.write_text("text\tlabel\nso angry\tanger\n" + "".join(
        f"t{i}\t{['joy', 'sadness'][i % 2]}\n" for i in range(12)))
    assert SequenceClassificationHead().prepare(CsvFiles(paths=[str(tsv)], columns={
        "text": "text", "label": "label"})) == ["anger", "joy", "sadness"]
    with pytest.raises(DataError, match=r"emotions\.tsv:1: label 'label' occurs only here"):
        SequenceClassificationHead().prepare(CsvFiles(paths=[str(tsv)], header=False,
                                                      columns={"text": 0, "label": 1}))
