"""The parallel_text source and the seq2seq head: metrics, fine-tuning on Multi30K, predict."""
import json
import os
import re
import types
from collections import Counter

import numpy as np
import pytest

from conftest import ROOT, run_kplm

MULTI30K = os.path.join(ROOT, "data", "multi30k")
TRAIN = {"name": "parallel_text", "source": os.path.join(MULTI30K, "train.en"),
         "target": os.path.join(MULTI30K, "train.de")}
VALIDATION = {"name": "parallel_text", "source": os.path.join(MULTI30K, "val.en"),
              "target": os.path.join(MULTI30K, "val.de")}


@pytest.fixture(scope="session")
def vocabulary(tmp_path_factory):
    """A WordPiece vocabulary written in milliseconds from the Multi30K subset: the special
    tokens, every character alone and as a ``##`` continuation, and each word seen twice
    (learning one with the tokenizer takes tens of seconds here)."""
    words, chars = Counter(), set()
    for name in ("train.en", "train.de"):
        for line in open(os.path.join(MULTI30K, name), encoding="utf-8"):
            tokens = re.findall(r"\w+|[^\w\s]", line.lower())
            words.update(tokens)
            chars.update("".join(tokens))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(chars)
    tokens += ["##" + c for c in sorted(chars)]
    tokens += sorted(w for w, n in words.items() if n >= 2 and w not in chars)
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(vocabulary):
    from kplm.tokenizers.wordpiece import WordPiece
    return WordPiece(vocabulary=vocabulary, strip_accents=False)


def write_pairs(directory, pairs, extra_target_lines=0):
    source, target = os.path.join(directory, "s.txt"), os.path.join(directory, "t.txt")
    with open(source, "w", encoding="utf-8") as f:
        f.write("".join(s + "\n" for s, _ in pairs))
    with open(target, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for _, t in pairs) + "more\n" * extra_target_lines)
    return source, target


def test_parallel_text_source(tmp_path):
    from kplm.data.parallel_text import ParallelText
    from kplm.errors import DataError
    from kplm.plugins import get_registry
    assert get_registry().get("data_source", "parallel_text") is ParallelText
    source, target = write_pairs(tmp_path, [("a dog", "ein Hund"), ("", "leer"),
                                            ("a cat", "eine Katze")])
    data = ParallelText(source=source, target=target)
    data.check()
    assert [(x["source"], x["target"]) for x in data.build().as_numpy_iterator()] == [
        (b"a dog", b"ein Hund"), (b"a cat", b"eine Katze")]
    assert list(data.texts().as_numpy_iterator()) == [b"a dog", b"ein Hund", b"a cat",
                                                      b"eine Katze"]
    source, target = write_pairs(tmp_path, [("a", "b")] * 3, extra_target_lines=2)
    with pytest.raises(DataError) as e:
        ParallelText(source=source, target=target).check()
    assert f"{source} has 3 lines" in str(e.value) and f"{target} has 5" in str(e.value)
    with open(target, "w", encoding="utf-8") as f:  # an editor's blank lines at the end
        f.write("b\nb\nb\n\n  \n")
    assert len(list(ParallelText(source=source, target=target).build())) == 3


def test_scores_hand_counted():
    from kplm.heads.seq2seq import Seq2SeqHead
    assert Seq2SeqHead.score(["a man sleeps ."], ["a man sleeps ."]) == {
        "bleu": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    scores = Seq2SeqHead.score(["the cat sat on the mat", "a dog ran"],
                               ["the cat sat on a mat", "a dog ran fast"])
    # BLEU: matched / total n-grams over both pairs: 1-grams 8/10, 2-grams 5/8, 3-grams 3/6,
    # 4-grams 1/4; hypotheses (10 words) longer than references (9): no brevity penalty.
    assert scores["bleu"] == pytest.approx((8 / 10 * 5 / 8 * 3 / 6 * 1 / 4) ** 0.25)
    # ROUGE F1 per pair, then averaged: unigrams 5/6 and F(3/4, 1) = 6/7; bigrams 3/5 and
    # F(2/3, 1) = 4/5; longest common subsequences 5 of 6/6 and 3 of 4/3, as unigrams.
    assert scores["rouge1"] == pytest.approx((5 / 6 + 6 / 7) / 2, abs=1e-6)
    assert scores["rouge2"] == pytest.approx((3 / 5 + 4 / 5) / 2, abs=1e-6)
    assert scores["rougeL"] == pytest.approx((5 / 6 + 6 / 7) / 2, abs=1e-6)


class Oracle:
    """A stand-in for ``Seq2SeqLM`` that 'generates' given texts for given sources, so that
    ``evaluate()`` can be checked against hand-computed scores."""

    def __init__(self, head, tokenizer, outputs, length=32):
        self.backbone = types.SimpleNamespace(decoder_sequence_length=length)
        self.sampler = self.generate_function = None
        layer = tokenizer.build()
        encode, _ = head._encoders(tokenizer, length, length)
        ids = np.asarray(encode(list(outputs))["encoder_token_ids"])
        self.outputs = {tuple(row): list(layer(text)) for row, text in zip(ids, outputs.values())}

    def generate_ids(self, encoder_token_ids, encoder_padding_mask, *, start_token_id,
                     end_token_id, pad_token_id, max_length):
        rows = []
        for ids in np.asarray(encoder_token_ids):
            row = [start_token_id] + self.outputs[tuple(ids)] + [end_token_id]
            rows.append((row + [pad_token_id] * max_length)[:max_length])
        return np.array(rows, "int32")


def test_evaluate_matches_hand_computed_scores(tmp_path, tokenizer):
    from kplm.data.parallel_text import ParallelText
    from kplm.heads.seq2seq import Seq2SeqHead
    head = Seq2SeqHead()
    pairs = [("A cat sat.", "The cat sat on the mat"), ("A dog ran.", "A dog ran")]
    source = ParallelText(*write_pairs(tmp_path, pairs))
    # generating the references exactly: every score is 1 (after the same normalization:
    # lowercased by this uncased tokenizer)
    exact = Oracle(head, tokenizer, dict(pairs))
    scores = head.evaluate(exact, source, tokenizer, batch_size=4, sequence_length=32)
    assert scores == {"bleu": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # the hand-counted case of test_scores_hand_counted, through generation ids
    near = Oracle(head, tokenizer, {"A cat sat.": "the cat sat on a mat",
                                    "A dog ran.": "a dog ran fast"})
    scores = head.evaluate(near, source, tokenizer, batch_size=4, sequence_length=32)
    assert scores["bleu"] == pytest.approx(0.5)
    assert scores["rouge2"] == pytest.approx(0.7, abs=1e-6)
    # the callback that puts the scores into Keras' validation logs
    logs = {"val_loss": 1.0}
    head.validation_callback(near, source, tokenizer, batch_size=4,
                             sequence_length=32).on_epoch_end(0, logs)
    assert logs["val_bleu"] == pytest.approx(0.5) and logs["val_loss"] == 1.0
    # copying the source: ROUGE drops punctuation, so "a cat sat ." vs "the cat sat on the
    # mat" is 2 of 3 words against 2 of 6, and "a dog ran ." vs "a dog ran" a perfect match
    baseline = head.baseline(source, source)["copy_source"]
    assert baseline["rouge1"] == pytest.approx((2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6)
                                                + 1.0) / 2, abs=1e-6)


def test_head_refuses_encoder_backbone_and_loads_encoder_decoder_runs(tmp_path, tokenizer):
    """``init_from`` a pretraining run of an EncoderDecoder (what span_corruption and denoising
    write) gives a backbone this head builds on; an encoder-only backbone is refused."""
    from kplm import runs
    from kplm.errors import ConfigError
    from kplm.heads.seq2seq import Seq2SeqHead
    from kplm.models.encoder import Encoder
    from kplm.models.encoder_decoder import EncoderDecoder
    from kplm.pretrained import load_pretrained
    head = Seq2SeqHead()
    with pytest.raises(ConfigError, match="encoder_decoder backbone"):
        head.build_model(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16,
                                 intermediate_dim=32, sequence_length=8))
    saved = EncoderDecoder(vocabulary_size=len(tokenizer.tokens), num_layers=1, hidden_dim=16,
                           intermediate_dim=32, sequence_length=16, decoder_sequence_length=12)
    with pytest.raises(ConfigError, match=r"head\.num_beams' \(100,000\) must be at most the "
                                          rf"vocabulary size \({len(tokenizer.tokens):,}\)"):
        Seq2SeqHead(num_beams=100_000).build_model(saved)  # more beams than tokens: a typo
    runs.save_backbone(saved, str(tmp_path))
    tokenizer.save(str(tmp_path / runs.TOKENIZER))
    backbone, loaded_tokenizer = load_pretrained(str(tmp_path))
    assert type(backbone) is EncoderDecoder and backbone.decoder_sequence_length == 12
    assert loaded_tokenizer.tokens == tokenizer.tokens
    np.testing.assert_array_equal(backbone.token_embedding.embeddings.numpy(),
                                  saved.token_embedding.embeddings.numpy())
    assert type(head.build_model(backbone)).__name__ == "Seq2SeqLM"
    with pytest.raises(ConfigError, match="decoder_sequence_length"):
        Seq2SeqHead(target_sequence_length=20).build_model(backbone)


def test_shipped_config_validates():
    from kplm.config import load_yaml
    from kplm.training.finetune import FinetuneSpec
    spec = FinetuneSpec(load_yaml(os.path.join(ROOT, "configs", "multi30k_translation.yaml")))
    assert spec.head["name"] == "seq2seq" and spec.backbone["name"] == "encoder_decoder"


@pytest.fixture(scope="session")
def translation_run(tmp_path_factory, vocabulary):
    """A 40-step fine-tune from random initialisation on the Multi30K subset."""
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path_factory.mktemp("multi30k") / "run")
    config = {
        "run_dir": run_dir, "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary": vocabulary, "strip_accents": False},
        "backbone": {"name": "encoder_decoder", "num_layers": 1, "num_heads": 2,
                     "hidden_dim": 32, "intermediate_dim": 64, "sequence_length": 32,
                     "dropout": 0.0},
        # scored on "test" (generation after training) rather than "validation" (fit's
        # periodic loss on it would trace one more Keras function)
        "data": {"train": TRAIN, "test": VALIDATION},
        "head": {"name": "seq2seq"},
        "trainer": {"steps": 40, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 5,
                    "eval_every": 40, "log_every": 5},
    }
    log = []
    metrics = finetune(config, echo=log.append, progress=False)
    return run_dir, metrics, log


def test_finetune_lowers_the_loss_and_scores_generations(translation_run):
    run_dir, metrics, log = translation_run
    losses = [float(re.search(r" loss ([\d.e+-]+)", line).group(1))
              for line in log if line.startswith("step ")]
    assert losses[-1] < losses[0] - 0.5, losses
    for split in ("test", "baseline"):
        scores = metrics[split] if split == "test" else metrics[split]["copy_source"]
        assert set(scores) == {"bleu", "rouge1", "rouge2", "rougeL"}
        assert all(0.0 <= v <= 1.0 for v in scores.values()), scores
    head = json.load(open(os.path.join(run_dir, "head.json"), encoding="utf-8"))
    assert head["name"] == "seq2seq" and head["num_beams"] == 1


def test_predict_cli_writes_generated_text(translation_run, tmp_path):
    run_dir = translation_run[0]
    inputs = tmp_path / "in.txt"
    inputs.write_text("A man is sleeping on a couch.\nTwo dogs play in the snow.\n",
                      encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run_kplm("predict", run_dir, "-i", str(inputs), "-o", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in rows] == ["A man is sleeping on a couch.",
                                           "Two dogs play in the snow."]
    for row in rows:
        assert isinstance(row["generated"], str) and row["generated"].strip(), row
        assert "[CLS]" not in row["generated"] and "[SEP]" not in row["generated"]


def test_evaluate_a_copied_run_on_parallel_files_reproduces_its_scores(translation_run):
    """``kplm evaluate RUN --data SRC --data TGT``: the two files of a parallel_text source."""
    from kplm.errors import ConfigError
    from kplm.runs import FinetunedRun
    run_dir, metrics, _ = translation_run
    run = FinetunedRun(run_dir)
    source = run.source([VALIDATION["source"], VALIDATION["target"]], split="test")
    assert run.evaluate(source, batch_size=16) == pytest.approx(metrics["test"], abs=1e-6)
    with pytest.raises(ConfigError, match="--data SOURCE --data TARGET"):
        run.source([VALIDATION["source"]], split="test")


def test_finetune_with_validation_logs_bleu_and_keeps_the_best_weights(tmp_path, vocabulary):
    """With a validation split, generation scores reach the console/TensorBoard logs and
    ``val_bleu`` chooses the kept weights."""
    from kplm.training.finetune import finetune
    pairs = [("A man sleeps.", "Ein Mann schläft."), ("Two dogs play.", "Zwei Hunde spielen.")]
    run_dir = str(tmp_path / "run")
    config = {
        "run_dir": run_dir, "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary": vocabulary, "strip_accents": False},
        "backbone": {"name": "encoder_decoder", "num_layers": 1, "num_heads": 2,
                     "hidden_dim": 16, "intermediate_dim": 32, "sequence_length": 16,
                     "dropout": 0.0},
        "data": {"train": TRAIN,
                 "validation": dict(zip(("name", "source", "target"),
                                        ("parallel_text", *write_pairs(tmp_path, pairs))))},
        "head": {"name": "seq2seq"},
        "trainer": {"steps": 4, "batch_size": 8, "eval_every": 2, "log_every": 2},
    }
    log = []
    metrics = finetune(config, echo=log.append, progress=False)
    validations = [line for line in log if line.startswith("validation at step")]
    assert len(validations) == 2 and all(" bleu " in line for line in validations), log
    assert metrics["best_step"] in (2, 4) and set(metrics["validation"]) >= {"bleu", "rougeL"}


def test_exported_saved_model_generates_like_predict_greedy_and_beam(translation_run,
                                                                      tmp_path):
    """`kplm export` of a seq2seq run: raw source strings in, generated strings out, in graph
    (tokenizer, cached decoder, sampler loop, detokenizer), loaded by a process with only
    TensorFlow + tensorflow-text; each signature equals `kplm predict` with that decoding."""
    from kplm.runs import FinetunedRun
    from kplm.testing import serve_in_fresh_process
    run_dir = translation_run[0]
    exported = str(tmp_path / "served")
    result = run_kplm("export", run_dir, "-o", exported)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "greedy(source)" in result.stdout and "beam(source)" in result.stdout
    texts = ["A man is sleeping on a couch.", "Two dogs play in the snow.", "",
             "A little girl climbs into a wooden playhouse, " * 6]  # empty; longer than 32
    run = FinetunedRun(run_dir)
    greedy = [p["generated"] for p in run.predict([{"source": t} for t in texts])]
    assert serve_in_fresh_process(exported, {"source": texts})["generated"] == greedy
    assert serve_in_fresh_process(exported, {"source": texts},
                                  signature="greedy")["generated"] == greedy
    run.head.num_beams = 4  # the beam signature's default when the head decodes greedily
    beam = [p["generated"] for p in run.predict([{"source": t} for t in texts])]
    assert serve_in_fresh_process(exported, {"source": texts},
                                  signature="beam")["generated"] == beam
