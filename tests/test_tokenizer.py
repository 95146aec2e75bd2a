"""WordPiece: learning, round trip, persistence, in-graph use in tf.data, `kplm tokenizer train`."""
import os

import tensorflow as tf
import yaml

from kplm.tokenizers.wordpiece import SPECIAL_TOKENS, WordPiece

from conftest import TRAIN, run_kplm


def test_special_tokens_first_and_size_bounded(tokenizer):
    assert tokenizer.tokens[:5] == SPECIAL_TOKENS
    assert 500 < len(tokenizer.tokens) <= 2000


def test_round_trip(tokenizer):
    text = "The European lobster is a species of the Atlantic Ocean."
    layer = tokenizer.build()
    ids = layer([text])  # eager: Python lists (inside tf.data: ragged tensors)
    back = layer.detokenize(tf.ragged.constant(ids))[0]
    assert back == "the european lobster is a species of the atlantic ocean ."
    assert tokenizer.token_to_id("[UNK]") not in ids[0]


def test_save_and_load_identical(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path))
    loaded = WordPiece.load(str(tmp_path))
    assert loaded.tokens == tokenizer.tokens
    sample = ["Homarus gammarus , known as the European lobster"]
    assert loaded.build()(sample) == tokenizer.build()(sample)


def test_runs_inside_tf_data_graph(tokenizer):
    layer = tokenizer.build()
    ds = tf.data.Dataset.from_tensor_slices(["a first line", "and a second one"]).batch(2)
    ds = ds.map(lambda t: layer(t))
    (ragged,) = list(ds)
    assert isinstance(ragged, tf.RaggedTensor) and ragged.shape[0] == 2


def test_continuation_mask(tokenizer):
    mask = tokenizer.continuation_mask()
    assert len(mask) == len(tokenizer.tokens)
    assert all(t.startswith("##") == m for t, m in zip(tokenizer.tokens, mask))
    assert any(mask)


def test_cli_tokenizer_train(tmp_path):
    config = {"tokenizer": {"name": "wordpiece", "vocabulary_size": 500,
                            "max_training_lines": 400},
              "data": {"train": {"name": "text_files", "paths": [TRAIN]}}}
    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "tok"
    result = run_kplm("tokenizer", "train", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "tokenizer: read" in result.stderr  # the progress display
    vocab = (out / "vocab.txt").read_text().split("\n")
    assert vocab[:5] == SPECIAL_TOKENS and "the" in vocab
    assert os.path.exists(out / "tokenizer.json")


def test_train_tokenizer_kind_replaces_the_configs_kind(tmp_path):
    """``kplm tokenizer train --kind sentencepiece`` on a WordPiece config keeps the options
    SentencePiece takes (vocabulary_size, lowercase) and drops the others (strip_accents)."""
    import json

    from kplm.tokenizers.train import train_tokenizer
    config = {"tokenizer": {"name": "wordpiece", "vocabulary_size": 400, "lowercase": True,
                            "strip_accents": True, "max_training_lines": 300},
              "data": {"train": {"name": "text_files", "paths": [TRAIN]}}}
    tokens = train_tokenizer(config, str(tmp_path / "sp"), progress=False,
                             kind="sentencepiece")
    assert len(tokens) == 400
    saved = json.loads((tmp_path / "sp" / "tokenizer.json").read_text())
    assert saved["name"] == "sentencepiece"
    assert (tmp_path / "sp" / "sentencepiece.model").exists()
