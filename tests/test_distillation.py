"""Task-specific distillation: the loss by hand, a student that learns its teacher's answers on
real SST-2 text (with unlabelled transfer text), and bad configs refused before anything is
written."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from kplm.errors import ConfigError

from conftest import ROOT, VALIDATION, run_kplm

SST = {split: {"name": "csv", "paths": [os.path.join(ROOT, "data", "sst2", f"{split}.tsv")],
               "columns": {"text": "sentence", "label": "label"}}
       for split in ("train", "dev")}
DATA = {"train": SST["train"], "validation": SST["dev"]}
SMALL = {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
         "intermediate_dim": 64, "sequence_length": 48, "dropout": 0.0}


#: ``python -c KILLED_IN_CACHE CONFIG.json``: fine-tunes, SIGKILLed while writing the cache.
KILLED_IN_CACHE = """
import json, os, signal, sys
from kplm.training import distillation
from kplm.training.finetune import finetune
example, written = distillation._example, []
def killed(row):
    written.append(row)
    if len(written) > 100:
        os.kill(os.getpid(), signal.SIGKILL)
    return example(row)
distillation._example = killed
finetune(json.load(open(sys.argv[1])), echo=None, progress=False)
"""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path_factory.mktemp("teacher") / "run")
    finetune({"run_dir": run_dir, "seed": 0,
              "tokenizer": {"name": "wordpiece", "vocabulary_size": 3000},
              "backbone": {**SMALL, "hidden_dim": 64, "intermediate_dim": 128},
              "data": DATA, "head": {"name": "sequence_classification", "pooling": "mean"},
              "trainer": {"steps": 200, "batch_size": 32, "learning_rate": 1e-3,
                          "warmup_steps": 20, "eval_every": 100, "log_every": 100}},
             echo=None, progress=False)
    return run_dir


def student_config(run_dir, teacher, **extra):
    config = {"run_dir": run_dir, "seed": 0, "backbone": dict(SMALL), "data": dict(DATA),
              "head": {"name": "sequence_classification", "pooling": "mean"},
              "distillation": {"teacher": teacher, "temperature": 2.0, "gold_weight": 0.0},
              "trainer": {"steps": 150, "batch_size": 32, "learning_rate": 2e-3,
                          "warmup_steps": 10, "eval_every": 150, "log_every": 50}}
    config.update(extra)
    return config


def test_loss_terms_match_hand_computed_values():
    import keras

    from kplm.models.distiller import TaskDistiller

    class Fixed(keras.Model):  # a "teacher" that returns given logits
        def __init__(self, out):
            super().__init__()
            self.out = keras.ops.convert_to_tensor(out, "float32")

        def call(self, x, training=False):
            return self.out

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    t_logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "float32")
    s_logits = np.array([[0.5, 0.5], [1.0, -1.0], [0.0, 2.0]], "float32")
    labels = np.array([0, 1, -1], "int32")  # the third row: unlabelled transfer text
    distiller = TaskDistiller(Fixed(s_logits), Fixed(t_logits), kind="classification",
                              temperature=2.0, gold_weight=0.3)
    terms = distiller.loss_terms({}, labels, s_logits, None)
    p, q = softmax(t_logits / 2), softmax(s_logits / 2)
    kl = (p * (np.log(p) - np.log(q))).sum(-1) * 4
    ce = -np.log(softmax(s_logits)[[0, 1], [0, 1]])
    assert terms["distillation"][0] == pytest.approx(0.7)
    assert float(terms["distillation"][1]) == pytest.approx(kl.mean(), rel=1e-5)
    assert terms["gold"][0] == pytest.approx(0.3)
    assert float(terms["gold"][1]) == pytest.approx(ce.mean(), rel=1e-5)  # rows 0 and 1 only

    scores_t = np.array([[1.0], [3.0]], "float32")
    scores_s = np.array([[2.0], [2.5]], "float32")
    regression = TaskDistiller(Fixed(scores_s), Fixed(scores_t), kind="regression")
    terms = regression.loss_terms({}, np.array([[4.0], [np.nan]], "float32"), scores_s, None)
    assert float(terms["distillation"][1]) == pytest.approx((1.0 + 0.25) / 2)
    assert float(terms["gold"][1]) == pytest.approx(4.0)  # (2 - 4)^2, the NaN row left out

    t_tok = np.array([[[3.0, 0.0], [0.0, 0.0], [1.0, 2.0]]], "float32")
    s_tok = np.array([[[0.0, 0.0], [5.0, 0.0], [0.0, 0.0]]], "float32")
    weight = np.array([[1.0, 0.0, 1.0]], "float32")  # the middle piece is not a word's first
    tokens = TaskDistiller(Fixed(s_tok), Fixed(t_tok), kind="tokens", temperature=1.0)
    terms = tokens.loss_terms({}, np.array([[0, 0, 1]], "int32"), s_tok, weight)
    p, q = softmax(t_tok[0]), softmax(s_tok[0])
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    assert float(terms["distillation"][1]) == pytest.approx((kl[0] + kl[2]) / 2, rel=1e-5)
    assert float(terms["gold"][1]) == pytest.approx(np.log(2.0), rel=1e-5)


def test_hidden_state_term_matches_hand_computed_values():
    """TinyBERT's term: each student layer output (embeddings, block 1) through its projection
    against the teacher's (embeddings, block 2), squared, averaged over real tokens; the
    logits come from the same forward pass as the student's own call."""
    from kplm.models.classifier import SequenceClassifier
    from kplm.models.distiller import TaskDistiller, layer_outputs
    from kplm.models.encoder import Encoder

    def tiny(width, layers):
        return SequenceClassifier(Encoder(vocabulary_size=30, num_layers=layers,
                                          hidden_dim=width, num_heads=2, intermediate_dim=16,
                                          sequence_length=6), num_classes=2, pooling="mean")
    student, teacher = tiny(4, 1), tiny(8, 2)
    distiller = TaskDistiller(student, teacher, kind="classification", hidden_weight=0.5)
    assert distiller.layer_pairs == [(0, 0), (1, 2)]
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 30, (2, 6)).astype("int32"),
         "segment_ids": np.zeros((2, 6), "int32"),
         "padding_mask": np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], "int32")}
    out = distiller(x)
    np.testing.assert_allclose(out["logits"], student(x), atol=1e-5)
    ours = [h.numpy() for h in layer_outputs(student.backbone)(x)["hidden"]]
    theirs = [h.numpy() for h in layer_outputs(teacher.backbone)(x)["hidden"]]
    expected = []
    for (s, t), projection in zip(distiller.layer_pairs, distiller.hidden_projections):
        kernel, bias = (w.numpy() for w in projection.weights)
        squared = ((ours[s] @ kernel + bias - theirs[t]) ** 2).mean(-1)
        expected.append(squared[x["padding_mask"] == 1].mean())
    weight, value = distiller.loss_terms(x, np.array([0, 1]), out, None)["hidden"]
    assert weight == 0.5 and float(value) == pytest.approx(np.mean(expected), rel=1e-5)
    names = [v.path for v in distiller.trainable_weights]
    assert sum("hidden_projection" in n for n in names) == 4  # two kernels, two biases


def test_student_learns_the_teachers_answers(teacher, tmp_path):
    """A smaller student trained on the teacher's outputs alone (gold weight 0) on SST-2 plus
    unlabelled WikiText-2 lines agrees with the teacher on most dev sentences, far more than a
    fresh student does; the saved student is an ordinary fine-tuned run (evaluate, predict)."""
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path / "student")
    config = student_config(run_dir, teacher)
    config["data"]["transfer"] = {"name": "text_files", "paths": [VALIDATION]}
    metrics = finetune(config, echo=None, progress=False)
    assert not os.path.exists(os.path.join(run_dir, "best.weights.h5"))
    student, master = FinetunedRun(run_dir), FinetunedRun(teacher)
    assert student.model.backbone.hidden_dim == 32  # the student, not the teacher, was saved
    assert json.load(open(os.path.join(run_dir, "head.json")))["labels"] == ["negative",
                                                                              "positive"]
    sentences = [{"text": line.split("\t")[1]} for line in  # label<TAB>sentence
                 open(SST["dev"]["paths"][0], encoding="utf-8").read().splitlines()[1:201]]
    ours = [p["label"] for p in student.predict(sentences)]
    theirs = [p["label"] for p in master.predict(sentences)]
    agreement = np.mean([a == b for a, b in zip(ours, theirs)])
    assert agreement > 0.8, (agreement, metrics)
    assert metrics["validation"]["accuracy"] > metrics["baseline"]["accuracy"] + 0.08, metrics
    out = run_kplm("evaluate", run_dir, "--data", SST["dev"]["paths"][0])
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout


def test_perturbed_copies_replace_words_by_the_teachers_neighbours(teacher, tmp_path):
    """With ``replace_words``, perturbed copies take words' neighbours in the teacher's token
    embeddings; a run with them (and ``select_weights``) says so and trains."""
    from kplm.data.csv_files import CsvFiles
    from kplm.heads.sequence_classification import SequenceClassificationHead
    from kplm.training.distillation import TransferMixture
    from kplm.training.finetune import finetune
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\na gripping , funny film\t1\n")
    mix = TransferMixture(CsvFiles(paths=[str(path)], columns={"text": "sentence",
                                                               "label": "label"}),
                          None, SequenceClassificationHead(), augment=20, replace=1.0)
    mix.neighbours = (["gripping", "funny"], [["dull", "slow"], ["boring", "bland"]])
    copies = [x["text"].decode().split() for x in mix.build().as_numpy_iterator()
              if x["label"] == b""]
    assert len(copies) == 20
    words = {w for copy in copies for w in copy}
    assert not words & {"gripping", "funny"} and words & {"dull", "slow", "boring", "bland"}

    lines = []  # the same run starts from the teacher's selected weights
    config = student_config(str(tmp_path / "student"), teacher)
    config["distillation"].update(augment=2, replace_words=0.5, select_weights=[0])
    config["backbone"].update(num_heads=1)  # 32 wide, as the teacher's heads
    config["trainer"].update(steps=10, eval_every=10, log_every=10)
    metrics = finetune(config, echo=lines.append, progress=False)
    described = next(line for line in lines if line.startswith("fine-tuning"))
    assert "words replaced with probability 0.5 by neighbours among" in described, described
    assert described.startswith("fine-tuning sequence_classification from the teacher's "
                                "weights selected (its blocks 0) for 10 steps"), described
    assert metrics["train_steps"] == 10
    assert set(metrics["validation"]) >= {"accuracy", "matthews_correlation"}


def test_cached_teacher_outputs_train_the_same_student(teacher, tmp_path):
    """``distillation.cache``: one pass of the rows (labelled + perturbed copies) with the
    teacher's outputs goes to ``teacher_outputs.tfrecord``; training on it gives the losses
    of the run whose teacher runs in each step (up to float rounding: the cache's batches
    are padded differently). A run stopped while writing the cache (as by kill -9: its
    half-written file left behind) is started again by the same command."""
    from kplm.training.finetune import finetune
    with open(SST["train"]["paths"][0], encoding="utf-8") as f:  # 1,000 sentences: 2,000 rows
        (tmp_path / "train.tsv").write_text("".join(f.readlines()[:1001]), encoding="utf-8")
    train = {**SST["train"], "paths": [str(tmp_path / "train.tsv")]}
    losses = {}
    for cache in (False, True):
        lines = []
        run_dir = str(tmp_path / f"cache_{cache}")
        config = student_config(run_dir, teacher, data={**DATA, "train": train})
        config["distillation"].update(augment=1, cache=cache, gold_weight=0.2)
        config["trainer"].update(steps=20, eval_every=20, log_every=5)
        if cache:  # killed while writing the cache, then the same command
            path = tmp_path / "student.json"
            path.write_text(json.dumps(config))
            killed = subprocess.run([sys.executable, "-c", KILLED_IN_CACHE, str(path)], cwd=ROOT,
                                    capture_output=True, text=True)
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
            assert "teacher_outputs.tfrecord.tmp" in os.listdir(run_dir)
        finetune(config, echo=lines.append, progress=False)
        losses[cache] = logged(lines, "distillation_loss")
    # killed right after writing metrics.json, before removing its best weights and cache: the
    # same command removes them, as the run would have, and answers the run's metrics
    finished = sorted(os.listdir(run_dir))
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    for name in ("best.weights.h5", "best.weights.h5.json", "teacher_outputs.tfrecord"):
        shutil.copy(os.path.join(run_dir, "model.weights.h5"), os.path.join(run_dir, name))
    assert finetune(config, echo=None, progress=False) == metrics
    assert sorted(os.listdir(run_dir)) == finished
    # the finished run removed its cache (only a resume reads it): written again here
    from kplm.training.distillation import CachedTeacherOutputs, TransferMixture
    from kplm.heads.sequence_classification import SequenceClassificationHead
    from kplm.data.csv_files import CsvFiles
    from kplm.runs import FinetunedRun, load_tokenizer
    assert not os.path.exists(tmp_path / "cache_True" / "teacher_outputs.tfrecord")
    head = SequenceClassificationHead(labels=["negative", "positive"])
    source = TransferMixture(CsvFiles(**{k: v for k, v in train.items() if k != "name"}),
                             None, head, augment=1)
    cache = CachedTeacherOutputs(source, str(tmp_path / "cache.tfrecord"))
    master = FinetunedRun(teacher)
    assert cache.write(master.model, head, load_tokenizer(teacher), batch_size=64,
                       sequence_length=48) == 2 * 1000  # the sentences and a copy of each
    cached = list(cache.build().take(3).as_numpy_iterator())
    fresh = master.predict([{"text": row["text"].decode()} for row in cached])
    for row, prediction in zip(cached, fresh):
        probabilities = np.exp(row["teacher_outputs"]) / np.exp(row["teacher_outputs"]).sum()
        np.testing.assert_allclose(probabilities, list(prediction["probabilities"].values()),
                                   atol=1e-4)
    assert cache.write(master.model, head, None, batch_size=64, sequence_length=48) == 0
    assert len(losses[True]) == 4
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-3)


@pytest.mark.parametrize("change, key", [
    (lambda c, t: c["distillation"].update(teacher=os.path.join(t, "nowhere")),
     "distillation.teacher"),
    (lambda c, t: c["distillation"].update(temperature=0), "distillation.temperature"),
    (lambda c, t: c["distillation"].update(gold_weight=1.5), "distillation.gold_weight"),
    (lambda c, t: c.update(tokenizer={"name": "wordpiece"}), "'tokenizer'"),
    (lambda c, t: c.update(head={"name": "regression"}), "distillation.teacher"),
    (lambda c, t: c["head"].update(labels=["a", "b"]), "head.labels"),
    (lambda c, t: c.update(distillation=None, data={**DATA, "transfer": DATA["train"]}),
     "data.transfer"),
    (lambda c, t: c.update(head={"name": "sequence_classification", "pair_field": "x"}),
     "head.pair_field"),
    (lambda c, t: c["distillation"].update(augment=-1), "distillation.augment"),
    (lambda c, t: c["distillation"].update(replace_words=0.3), "distillation.replace_words"),
    (lambda c, t: c["distillation"].update(hidden_weight=-1), "distillation.hidden_weight"),
    (lambda c, t: c["distillation"].update(hidden_weight=1, cache=True), "distillation.cache"),
    # weight selection: heads as wide as the teacher's (32), one teacher block per student block
    (lambda c, t: c["distillation"].update(select_weights=[0]), "backbone.num_heads"),
    (lambda c, t: (c["distillation"].update(select_weights=[1]),
                   c["backbone"].update(num_heads=1)), "distillation.select_weights"),
    (lambda c, t: (c["distillation"].update(select_weights=[0, 0])),
     "distillation.select_weights"),
    (lambda c, t: (c["distillation"].update(select_weights=[0], project_embeddings=True)),
     "distillation.select_weights"),
    (lambda c, t: (c["distillation"].update(select_weights=[0]),
                   c["backbone"].update(num_heads=1, hidden_dim=128)), "backbone.hidden_dim"),
])
def test_bad_distillation_configs_are_refused_before_anything_is_written(teacher, tmp_path,
                                                                         change, key):
    from kplm.errors import DataError
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path / "student")
    config = student_config(run_dir, teacher)
    change(config, teacher)
    with pytest.raises((ConfigError, DataError)) as error:
        finetune(config, echo=None, progress=False)
    message = str(error.value)
    assert key in message and "\n" not in message, message
    assert not os.path.exists(run_dir)


def test_a_pretraining_run_is_not_a_task_teacher(pretrained_run, tmp_path):
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path / "student")
    with pytest.raises(ConfigError, match="not a fine-tuned kplm run .*pretraining"):
        finetune(student_config(run_dir, pretrained_run["run_dir"]), echo=None, progress=False)
    assert not os.path.exists(run_dir)


# --- a Hugging Face *ForSequenceClassification teacher ----------------------------------------
REFERENCE = os.path.join(ROOT, "tests", "reference", "tiny_bert_classifier.npz")


def test_a_hugging_face_classifier_teaches_like_transformers(tmp_path):
    """A ``BertForSequenceClassification`` directory read as a teacher: its logits equal
    transformers' (encoder, pooler and classifier imported)."""
    from kplm.testing import write_tiny_hf_checkpoint
    from kplm.training.distillation import load_teacher, teacher_tokenizer
    directory = str(tmp_path / "hf")
    write_tiny_hf_checkpoint(directory, "bert", num_labels=3)
    reference = np.load(REFERENCE, allow_pickle=False)
    teacher = load_teacher(directory, teacher_tokenizer(directory))
    logits = teacher.model({"token_ids": reference["input_ids"],
                            "segment_ids": np.zeros_like(reference["input_ids"]),
                            "padding_mask": reference["attention_mask"]})
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4)


def test_a_student_distils_a_hugging_face_classifier(tmp_path):
    """End to end: a tiny BertForSequenceClassification (generic LABEL_i names: the student's
    labels in order) teaches a 1-layer student on SST-2; the student is saved alone. A
    teacher without a classifier, and a head it cannot teach, are refused in one line before
    anything is written."""
    from kplm.runs import FinetunedRun
    from kplm.testing import write_tiny_hf_checkpoint
    from kplm.training.finetune import finetune
    hf = str(tmp_path / "hf")
    write_tiny_hf_checkpoint(hf, "bert", num_labels=2, max_positions=64)
    run_dir = str(tmp_path / "student")
    config = student_config(run_dir, hf)
    config["trainer"].update(steps=20, eval_every=20)
    metrics = finetune(config, echo=None, progress=False)
    assert json.load(open(os.path.join(run_dir, "head.json")))["labels"] == ["negative",
                                                                              "positive"]
    assert FinetunedRun(run_dir).model.backbone.hidden_dim == 32  # the student
    assert 0 <= metrics["validation"]["accuracy"] <= 1
    plain = str(tmp_path / "plain")
    write_tiny_hf_checkpoint(plain, "bert")  # a BertModel: no classifier
    for teacher, head, message in ((plain, None, "ForSequenceClassification"),
                                   (hf, {"name": "token_classification"}, "teaches")):
        refused = student_config(str(tmp_path / "refused"), teacher)
        if head:
            refused["head"] = head
        with pytest.raises(ConfigError, match=message) as error:
            finetune(refused, echo=None, progress=False)
        assert "\n" not in str(error.value)
        assert not os.path.exists(tmp_path / "refused")


# --- task-agnostic distillation (DistilBERT-style pretraining) -----------------------------------
def logged(lines, name):
    """The values of ``name`` in the training log lines, in order."""
    import re
    return [float(m.group(1)) for line in lines if line.startswith("step ")
            for m in [re.search(rf"\b{name} ([0-9.e+-]+)", line)] if m]


def test_select_layers_copies_the_chosen_blocks():
    from kplm.models.encoder import Encoder
    from kplm.models.select_layers import select_layers
    teacher = Encoder(vocabulary_size=50, num_layers=4, hidden_dim=16, num_heads=2,
                      intermediate_dim=32, sequence_length=8)
    student = select_layers(teacher, [1, 3])
    assert student.num_layers == 2
    for mine, theirs in ((0, 1), (1, 3)):
        for a, b in zip(student.get_layer(f"transformer_layer_{mine}").get_weights(),
                        teacher.get_layer(f"transformer_layer_{theirs}").get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(student.token_embedding.get_weights()[0],
                                  teacher.token_embedding.get_weights()[0])
    with pytest.raises(ConfigError, match=r"backbone.keep_layers': layer 4 does not exist; "
                                          r"the checkpoint has 4 layers"):
        select_layers(teacher, [0, 4])
    # an encoder-decoder (BART's shape): the chosen blocks on both sides (block 0 was copied
    # for any choice); T5's nested stacks are refused, not copied wrong
    from kplm.models.encoder_decoder import EncoderDecoder
    from kplm.models.t5 import T5EncoderDecoder
    bart = EncoderDecoder(vocabulary_size=50, num_layers=3, hidden_dim=16, num_heads=2,
                          intermediate_dim=32, sequence_length=8)
    kept = select_layers(bart, [2])
    assert kept.num_layers == 1 and kept.num_decoder_layers == 1
    for side in ("encoder", "decoder"):
        for a, b in zip(kept.get_layer(f"{side}_layer_0").get_weights(),
                        bart.get_layer(f"{side}_layer_2").get_weights()):
            np.testing.assert_array_equal(a, b)
    t5 = T5EncoderDecoder(vocabulary_size=50, num_layers=2, hidden_dim=16, num_heads=2,
                          intermediate_dim=32)
    with pytest.raises(ConfigError, match=r"T5EncoderDecoder backbones cannot keep some of "
                                          r"their layers"):
        select_layers(t5, [1])


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory):
    from kplm.testing import write_tiny_hf_checkpoint
    path = str(tmp_path_factory.mktemp("mlm_teacher"))
    write_tiny_hf_checkpoint(path, num_layers=4, masked_lm_head=True)
    return path


def distil_config(run_dir, teacher, **objective):
    return {"run_dir": run_dir, "seed": 0,
            "backbone": {"name": "hf", "path": teacher, "keep_layers": [1, 3],
                         "sequence_length": 32},
            "data": {"train": {"name": "text_files", "paths": [VALIDATION]},
                     "validation": {"name": "text_files", "paths": [VALIDATION]}},
            "objective": {"name": "distillation", "teacher": teacher, **objective},
            "trainer": {"steps": 60, "batch_size": 16, "learning_rate": 3e-3,
                        "warmup_steps": 5, "eval_every": 60, "validation_steps": 2,
                        "log_every": 10}}


def test_distilbert_style_pretraining_learns_from_the_teacher(mlm_teacher, tmp_path):
    """A 2-of-4-layer student of a masked-LM teacher: its soft and cosine terms fall, and the
    run leaves an ordinary 2-layer backbone that fine-tuning reads."""
    from kplm import runs
    from kplm.training.pretrain import pretrain
    run_dir = str(tmp_path / "student")
    lines = []
    metrics = pretrain(distil_config(run_dir, mlm_teacher), echo=lines.append, progress=False)
    assert "masked-LM head: imported" in " ".join(lines), lines[:3]
    soft, cosine = logged(lines, "soft_loss"), logged(lines, "cosine_loss")
    assert len(soft) == 6 and len(cosine) == 6, lines
    assert soft[-1] < 0.8 * soft[0] and cosine[-1] < 0.8 * cosine[0], (soft, cosine)
    backbone = runs.load_backbone(run_dir)
    assert backbone.num_layers == 2 and metrics["parameters"] == backbone.count_params()


@pytest.mark.parametrize("change, message", [
    (lambda c, t: c["backbone"].update(keep_layers=[3, 4]),
     "backbone.keep_layers': layer 4 does not exist"),
    (lambda c, t: c["backbone"].update(keep_layers=[2, 1]), "backbone.keep_layers"),
    (lambda c, t: c["objective"].update(teacher=os.path.join(t, "nowhere")),
     "objective.teacher"),
    (lambda c, t: c["objective"].update(temperature=-1), "objective.temperature"),
    (lambda c, t: c.update(backbone={"name": "encoder", "num_layers": 1, "hidden_dim": 32,
                                     "num_heads": 4, "intermediate_dim": 64,
                                     "sequence_length": 32},
                           tokenizer={"name": "wordpiece", "vocabulary_size": 200}),
     "objective.teacher': the teacher's vocabulary"),
])
def test_bad_distillation_objectives_are_refused(mlm_teacher, tmp_path, change, message):
    from kplm.training.pretrain import pretrain
    run_dir = str(tmp_path / "student")
    config = distil_config(run_dir, mlm_teacher)
    change(config, mlm_teacher)
    with pytest.raises(ConfigError) as error:
        pretrain(config, echo=None, progress=False)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert not os.path.exists(run_dir)


def test_a_teacher_without_masked_lm_head_needs_soft_weight_0(tmp_path):
    from kplm.testing import write_tiny_hf_checkpoint
    from kplm.training.pretrain import pretrain
    teacher = str(tmp_path / "bert_model")
    write_tiny_hf_checkpoint(teacher, num_layers=2)
    config = distil_config(str(tmp_path / "a"), teacher)
    config["backbone"]["keep_layers"] = [1]
    with pytest.raises(ConfigError, match="objective.soft_weight': the teacher .* has no "
                                          "masked-LM head"):
        pretrain(config, echo=None, progress=False)
    config = distil_config(str(tmp_path / "b"), teacher, soft_weight=0)
    config["backbone"]["keep_layers"] = [1]
    config["trainer"]["steps"] = 10
    lines = []
    pretrain(config, echo=lines.append, progress=False)
    assert logged(lines, "cosine_loss") and not logged(lines, "soft_loss")


@pytest.mark.parametrize("head, data", [
    ({"name": "regression", "pair_field": "text_pair"},
     {split: {"name": "csv", "paths": [os.path.join(ROOT, "data", "stsb", f"{name}.tsv")],
              "columns": {"text": "sentence1", "text_pair": "sentence2", "label": "score"}}
      for split, name in (("train", "train"), ("validation", "dev"))}),
    ({"name": "token_classification"},
     {split: {"name": "conll", "paths": [os.path.join(ROOT, "data", "wnut17", f"{name}.conll")]}
      for split, name in (("train", "train"), ("validation", "dev"))}),
])
def test_regression_and_token_students(tmp_path, head, data):
    """Pairs with pair-shaped transfer text, and per-token distillation: the student trains
    (its distillation term falls), is saved alone and predicts like any fine-tuned run."""
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    small = {**SMALL, "sequence_length": 64}
    trainer = {"steps": 40, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 4,
               "eval_every": 40, "log_every": 10}
    teacher = str(tmp_path / "teacher")
    finetune({"run_dir": teacher, "seed": 0, "backbone": small, "head": head, "data": data,
              "tokenizer": {"name": "wordpiece", "vocabulary_size": 2000},
              "trainer": trainer}, echo=None, progress=False)
    student_data = dict(data)
    if head["name"] == "regression":
        student_data["transfer"] = {**data["validation"],
                                    "columns": {"text": "sentence1", "text_pair": "sentence2"}}
    lines = []
    # the token student also learns the teacher's hidden states (TinyBERT)
    hidden = {"hidden_weight": 1.0} if head["name"] == "token_classification" else {}
    metrics = finetune({"run_dir": str(tmp_path / "student"), "seed": 0, "backbone": small,
                        "head": head, "data": student_data,
                        "distillation": {"teacher": teacher, "gold_weight": 0.5, **hidden},
                        "trainer": trainer}, echo=lines.append, progress=False)
    from test_distillation import logged
    soft = logged(lines, "distillation_loss")
    assert len(soft) == 4 and soft[-1] < soft[0], lines
    if hidden:
        term = logged(lines, "hidden_loss")
        assert len(term) == 4 and term[-1] < term[0], lines
    assert np.isfinite(list(metrics["validation"].values())[0])
    run = FinetunedRun(str(tmp_path / "student"))
    assert run.model.backbone.hidden_dim == 32
    example = ({"text": "a dog runs", "text_pair": "a dog is running"}
               if head["name"] == "regression" else {"text": "Paris is big"})
    assert len(run.predict([example])) == 1


def test_projected_embeddings_keep_the_teachers_geometry():
    """A teacher whose token embeddings span 4 directions, projected into an 8-wide student:
    all variance kept, and every pair of tokens as similar (cosine, after centring) as in
    the teacher."""
    from kplm.models.distiller import project_embeddings
    from kplm.models.encoder import Encoder

    def encoder(width):
        return Encoder(vocabulary_size=40, num_layers=1, hidden_dim=width, num_heads=2,
                       intermediate_dim=16, sequence_length=8)
    teacher, student = encoder(16), encoder(8)
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(40, 4)) @ rng.normal(size=(4, 16))
    teacher.token_embedding.embeddings.assign(low_rank.astype("float32"))
    assert project_embeddings(student, teacher) == pytest.approx(1.0)

    def cosines(m):
        m = m - m.mean(axis=0)
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        return m @ m.T
    np.testing.assert_allclose(cosines(student.token_embedding.embeddings.numpy()),
                               cosines(low_rank), atol=1e-4)
    spread = float(np.std(student.token_embedding.embeddings.numpy()))
    assert 0.005 < spread < 0.1  # the student's own initial scale, not the teacher's


def random_encoder(seed, **shape):
    """An ``Encoder`` whose every weight is random, so each teacher coordinate is unique."""
    from kplm.models.encoder import Encoder
    model = Encoder(vocabulary_size=40, sequence_length=8, **shape)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return model


def test_selected_weights_keep_one_set_of_the_teachers_coordinates():
    """Weight selection (Xu et al. 2023): the student's hidden units, heads and feed-forward
    units are the same subset of the teacher's in every weight; at the teacher's own widths
    it is the teacher's chosen blocks exactly (the same outputs as ``select_layers``)."""
    from kplm.models.distiller import select_weights
    from kplm.models.encoder import Encoder
    from kplm.models.select_layers import select_layers
    shape = {"num_heads": 4, "hidden_dim": 16, "intermediate_dim": 32}
    teacher = random_encoder(0, num_layers=3, **shape)
    same = Encoder(vocabulary_size=40, sequence_length=8, num_layers=2, **shape)
    select_weights(same, teacher, [0, 2])
    inputs = {"token_ids": np.array([[2, 7, 9, 3, 0]]), "segment_ids": np.zeros((1, 5), int),
              "padding_mask": np.array([[1, 1, 1, 1, 0]])}
    np.testing.assert_allclose(same(inputs)["sequence_output"],
                               select_layers(teacher, [0, 2])(inputs)["sequence_output"],
                               atol=1e-5)

    student = Encoder(vocabulary_size=40, sequence_length=4, num_layers=1, num_heads=2,
                      hidden_dim=8, intermediate_dim=16)
    select_weights(student, teacher, [1])
    tokens, theirs = student.token_embedding.embeddings.numpy(), teacher.token_embedding
    hidden = [int(np.argmin(np.abs(theirs.embeddings.numpy() - column[:, None]).sum(0)))
              for column in tokens.T]  # which teacher unit each student unit is
    assert sorted(set(hidden)) == hidden and len(hidden) == 8 and hidden[0] == 0
    block, source = student.transformer_layers[0], teacher.transformer_layers[1]
    mine = {v.path.split("/", 1)[1]: v.numpy() for v in block.weights}
    taught = {v.path.split("/", 1)[1]: v.numpy() for v in source.weights}
    kernel = taught["self_attention_layer/query/kernel"][hidden]  # [8, 4 heads, 4]
    heads = [int(np.argmin([np.abs(kernel[:, h] - column).sum() for h in range(4)]))
             for column in np.moveaxis(mine["self_attention_layer/query/kernel"], 1, 0)]
    assert sorted(set(heads)) == heads and len(heads) == 2
    np.testing.assert_array_equal(mine["self_attention_layer/query/kernel"], kernel[:, heads])
    np.testing.assert_array_equal(
        mine["self_attention_layer/attention_output/kernel"],
        taught["self_attention_layer/attention_output/kernel"][heads][:, :, hidden])
    inner = taught["feedforward_intermediate_dense/kernel"][hidden]  # [8, 32]
    units = [int(np.argmin(np.abs(inner - column[:, None]).sum(0)))
             for column in mine["feedforward_intermediate_dense/kernel"].T]
    assert sorted(set(units)) == units and len(units) == 16
    np.testing.assert_array_equal(mine["feedforward_intermediate_dense/kernel"],
                                  inner[:, units])
    np.testing.assert_array_equal(mine["feedforward_output_dense/kernel"],  # the same units
                                  taught["feedforward_output_dense/kernel"][units][:, hidden])
    np.testing.assert_array_equal(student.position_embedding.position_embeddings.numpy(),
                                  teacher.position_embedding.position_embeddings.numpy()[
                                      :4, hidden])
    np.testing.assert_array_equal(student.embeddings_layer_norm.gamma.numpy(),
                                  teacher.embeddings_layer_norm.gamma.numpy()[hidden])

