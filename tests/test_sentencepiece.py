"""SentencePiece: learning from a stream, fixed special ids, round trip, persistence, T5/XLM-R
model files, `kplm tokenizer train`."""
import io
import os

import pytest
import sentencepiece as spm
import tensorflow as tf
import yaml

from kplm.data.text_files import TextFiles
from kplm.errors import ConfigError
from kplm.tokenizers.sentencepiece import SPECIAL_TOKENS, SentencePiece

from conftest import TRAIN, run_kplm

TEXT = "The European lobster is a species of the Atlantic Ocean, caught in pots."


@pytest.fixture(scope="module")
def tok():
    tokenizer = SentencePiece(vocabulary_size=1000, max_training_lines=1000)
    tokenizer.train(TextFiles(paths=[TRAIN]).texts(), progress=False)
    return tokenizer


def test_specials_at_fixed_ids(tok):
    assert len(tok.tokens) == 1000
    assert tok.tokens[:5] == SPECIAL_TOKENS
    assert [tok.special_id(r) for r in ("pad", "unk", "cls", "sep", "mask")] == [0, 1, 2, 3, 4]
    assert tok.sentinel_ids == list(range(5, 105))
    assert tok.tokens[5] == "<extra_id_0>" and tok.tokens[104] == "<extra_id_99>"
    assert tok.special_token_ids == list(range(105))
    assert tok.pair_separator == ("sep",) and tok.continuation_prefix is None
    with pytest.raises(ConfigError, match="WordPiece"):
        tok.require_word_pieces("token classification")


def test_round_trip_in_graph(tok):
    layer = tok.build()
    ids = layer([TEXT])[0]  # eager: Python lists
    assert tok.special_id("unk") not in ids and len(ids) < len(TEXT.split()) * 3
    assert layer.detokenize(tf.ragged.constant([ids]))[0] == TEXT  # lossless, case kept
    # User-defined pieces: the text of <mask> and of a sentinel maps to its id.
    assert layer(["a <mask> b <extra_id_7>"])[0].count(4) == 1
    assert 12 in layer(["a <mask> b <extra_id_7>"])[0]
    # Inside tf.data: ragged tensors.
    ds = tf.data.Dataset.from_tensor_slices([TEXT, "a second line"]).batch(2).map(layer)
    (ragged,) = list(ds)
    assert isinstance(ragged, tf.RaggedTensor) and ragged[0].numpy().tolist() == ids


def test_save_and_load_identical(tok, tmp_path):
    tok.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["sentencepiece.model", "tokenizer.json"]
    loaded = SentencePiece.load(str(tmp_path))
    assert loaded.tokens == tok.tokens and loaded.sentinel_ids == tok.sentinel_ids
    assert loaded.build()([TEXT]) == tok.build()([TEXT])
    from kplm.runs import load_tokenizer  # how a run directory finds its tokenizer kind
    os.makedirs(tmp_path / "run")
    tok.save(str(tmp_path / "run" / "tokenizer"))
    assert load_tokenizer(str(tmp_path / "run")).tokens == tok.tokens


def foreign_model(path, **ids):
    """A small SentencePiece model with another toolkit's special ids, written to ``path``."""
    lines = (line.strip() for line in open(TRAIN, encoding="utf-8") if line.strip())
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(line for _, line in zip(range(300), lines)), model_writer=writer,
        vocab_size=300, minloglevel=2, hard_vocab_limit=False, max_sentence_length=1 << 16,
        **ids)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(writer.getvalue())
    return spm.SentencePieceProcessor(model_file=path)


def test_loads_t5_and_xlmr_model_files(tmp_path):
    # T5's spiece.model: <pad> 0, </s> 1, <unk> 2, no <s>; Hugging Face appends 100 sentinels
    # with <extra_id_0> last.
    t5 = foreign_model(str(tmp_path / "t5" / "spiece.model"), pad_id=0, eos_id=1, unk_id=2,
                       bos_id=-1)
    tok = SentencePiece(vocabulary=str(tmp_path / "t5"))
    size = t5.get_piece_size()
    assert tok.tokens[:size] == [t5.id_to_piece(i) for i in range(size)]
    assert tok.sentinel_ids[0] == size + 99 and tok.sentinel_ids[99] == size
    assert [tok.special_id(r) for r in ("pad", "sep", "unk")] == [0, 1, 2]
    assert tok.tokens[tok.special_id("cls")] == "<s>" and "<mask>" in tok.tokens
    assert tok.build()([TEXT])[0] == t5.encode(TEXT)
    # XLM-R's sentencepiece.bpe.model (the file itself): <unk> 0, <s> 1, </s> 2, no <pad>.
    xlmr = foreign_model(str(tmp_path / "xlmr" / "sentencepiece.bpe.model"), unk_id=0,
                         bos_id=1, eos_id=2, pad_id=-1)
    tok = SentencePiece(vocabulary=str(tmp_path / "xlmr" / "sentencepiece.bpe.model"),
                        num_sentinels=0)
    assert [tok.special_id(r) for r in ("unk", "cls", "sep")] == [0, 1, 2]
    assert tok.special_id("pad") >= xlmr.get_piece_size() and tok.sentinel_ids == []
    assert tok.build()([TEXT])[0] == xlmr.encode(TEXT)


def test_bad_settings_name_the_config_key(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.vocabulary: .* not found"):
        SentencePiece(vocabulary=str(tmp_path / "missing.model"))
    with pytest.raises(ConfigError, match="holds none of"):
        SentencePiece(vocabulary=str(tmp_path))
    (tmp_path / "bad.model").write_text("not a model")
    with pytest.raises(ConfigError, match="is not a SentencePiece model"):
        SentencePiece(vocabulary=str(tmp_path / "bad.model"))
    with pytest.raises(ConfigError, match="tokenizer.vocabulary_size"):
        SentencePiece(vocabulary_size=50)
    with pytest.raises(ConfigError, match="tokenizer.num_sentinels"):
        SentencePiece(num_sentinels=-1)


def test_cli_tokenizer_train(tmp_path):
    config = {"tokenizer": {"name": "sentencepiece", "vocabulary_size": 1000},
              "data": {"train": {"name": "text_files", "paths": [TRAIN]}}}
    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "tok"
    result = run_kplm("tokenizer", "train", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "tokenizer: read" in result.stderr  # the progress display
    assert "learned 1000 pieces" in result.stderr
    tok = SentencePiece.load(str(out))
    assert len(tok.tokens) == 1000 and tok.tokens[:5] == SPECIAL_TOKENS
    assert "\u2581the" in tok.tokens
