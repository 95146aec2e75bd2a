"""XLM-R and CamemBERT tokenizers: fairseq's numbering of a SentencePiece model, equal to
transformers' ids on a multilingual sample (``tests/reference/tiny_fairseq_tokens.json``), and
a tiny XLM-R checkpoint that imports, matches transformers' hidden states, fine-tunes, saves,
predicts and serves end to end."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT

REFERENCE = os.path.join(ROOT, "tests", "reference")
MODEL = os.path.join(REFERENCE, "tiny_xlmr_sentencepiece.bpe.model")
LAYOUTS = {"xlm-roberta": "xlm_roberta", "camembert": "camembert"}


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(REFERENCE, "tiny_fairseq_tokens.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from kplm.testing import write_tiny_hf_checkpoint
    out = {}
    for model_type in LAYOUTS:
        directory = str(tmp_path_factory.mktemp(model_type) / "model")
        write_tiny_hf_checkpoint(directory, model_type, sentencepiece_model=MODEL)
        out[model_type] = directory
    return out


def _packed(tokenizer, *columns):
    """Token ids as the classification heads pack them, padding removed."""
    import tensorflow as tf

    from kplm.heads.sequence_classification import SequenceClassificationHead
    inputs = SequenceClassificationHead._inputs(tokenizer, 64)
    x = inputs(*(tf.constant(c) for c in columns))
    return [row[mask.astype(bool)].tolist()
            for row, mask in zip(x["token_ids"].numpy(), x["padding_mask"].numpy())]


@pytest.mark.parametrize("model_type", list(LAYOUTS))
def test_ids_equal_transformers_on_a_multilingual_sample(model_type, reference, checkpoints):
    from kplm.pretrained.huggingface import load_tokenizer
    tokenizer = load_tokenizer(checkpoints[model_type])
    want = reference[model_type]
    assert tokenizer.id_layout == LAYOUTS[model_type]
    assert len(tokenizer.tokens) == want["vocab_size"]
    assert tokenizer.special_id("mask") == want["mask_token_id"]
    assert _packed(tokenizer, reference["sentences"]) == want["ids"]
    first, second = reference["pair"]
    assert _packed(tokenizer, [first], [second]) == [want["pair"]]  # <s> a </s></s> b </s>
    # unknown pieces (Cyrillic, CJK) map to the dictionary's <unk>, not SentencePiece's id 0
    assert tokenizer.special_id("unk") == 3 and 3 in want["ids"][3]
    assert all(tokenizer.special_id("cls") not in row[1:] for row in want["ids"])


@pytest.mark.parametrize("model_type", list(LAYOUTS))
def test_a_saved_tokenizer_keeps_its_layout_and_detokenizes(model_type, checkpoints, tmp_path):
    from kplm.pretrained.huggingface import load_tokenizer
    from kplm.tokenizers.sentencepiece import SentencePiece
    tokenizer = load_tokenizer(checkpoints[model_type])
    tokenizer.save(str(tmp_path / "tok"))
    again = SentencePiece.load(str(tmp_path / "tok"))
    assert again.id_layout == tokenizer.id_layout and again.tokens == tokenizer.tokens
    text = ["Zwei Hunde spielen im Schnee", "a man sleeps"]
    ids = again.build()(text)
    assert ids.to_list() == tokenizer.build()(text).to_list()
    texts = again.build().detokenize(ids)  # eager keras_hub: a list of str
    texts = texts.numpy().tolist() if hasattr(texts, "numpy") else texts
    assert [t.decode() if isinstance(t, bytes) else t for t in texts] == text


def test_refuses_a_layout_without_a_model():
    from kplm.errors import ConfigError
    from kplm.tokenizers.sentencepiece import SentencePiece
    with pytest.raises(ConfigError, match="tokenizer.id_layout"):
        SentencePiece(id_layout="xlm_roberta")


def test_tiny_xlm_roberta_hidden_states_equal_transformers(checkpoints):
    from kplm.pretrained.huggingface import load_encoder
    reference = np.load(os.path.join(REFERENCE, "tiny_xlmr.npz"), allow_pickle=False)
    encoder = load_encoder(checkpoints["xlm-roberta"])
    out = encoder({"token_ids": reference["input_ids"],
                   "segment_ids": np.zeros_like(reference["input_ids"]),
                   "padding_mask": reference["attention_mask"]})
    mask = reference["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(out["sequence_output"])[mask],
                               reference["last_hidden_state"][mask], atol=1e-4)


@pytest.mark.slow
def test_tiny_xlm_roberta_fine_tunes_predicts_and_serves(checkpoints, tmp_path):
    from conftest import run_kplm
    from kplm.runs import FinetunedRun
    from kplm.testing import serve_in_fresh_process
    from kplm.training.finetune import finetune
    sst = os.path.join(ROOT, "data", "sst2")
    columns = {"text": "sentence", "label": "label"}
    run_dir = str(tmp_path / "run")
    metrics = finetune({
        "run_dir": run_dir, "seed": 0,
        "backbone": {"name": "hf", "path": checkpoints["xlm-roberta"]},
        "data": {"train": {"name": "csv", "paths": [os.path.join(sst, "train.tsv")],
                           "columns": columns},
                 "validation": {"name": "csv", "paths": [os.path.join(sst, "dev.tsv")],
                                "columns": columns}},
        "head": {"name": "sequence_classification", "pooling": "mean"},
        "finetune": {"sequence_length": 32},
        "trainer": {"steps": 20, "batch_size": 16, "learning_rate": 1e-3, "eval_every": 20}},
        echo=None, progress=False)
    assert 0 <= metrics["validation"]["accuracy"] <= 1
    with open(os.path.join(run_dir, "tokenizer", "tokenizer.json")) as f:
        assert json.load(f)["id_layout"] == "xlm_roberta"
    texts = ["Ein Mann schläft .", "a fine film", "東京"]
    expected = FinetunedRun(run_dir).predict([{"text": t} for t in texts])
    exported = str(tmp_path / "served")
    assert run_kplm("export", run_dir, "-o", exported).returncode == 0
    served = serve_in_fresh_process(exported, {"text": texts})
    np.testing.assert_allclose(
        np.asarray(served["probabilities"]),
        [[p["probabilities"][label] for label in ("negative", "positive")] for p in expected],
        atol=1e-4)
