"""span_corruption and denoising end to end on the bundled corpus: batches that reconstruct the
text, refusals naming the config key, and the loss going down on a tiny encoder-decoder."""
import copy
from collections import Counter

import numpy as np
import pytest

from kplm.data.text_files import TextFiles
from kplm.errors import ConfigError, KplmError
from kplm.objectives.denoising import DenoisingObjective
from kplm.objectives.span_corruption import SpanCorruptionObjective, packed_batches
from kplm.tokenizers.sentencepiece import SentencePiece
from kplm.training.pretrain import pretrain

from conftest import TRAIN, VALIDATION

SEQUENCE_LENGTH = 64
TINY = {
    "seed": 0,
    "data": {"train": {"name": "text_files", "paths": [TRAIN]},
             "validation": {"name": "text_files", "paths": [VALIDATION]}},
    "backbone": {"name": "encoder_decoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 64,
                 "intermediate_dim": 128, "sequence_length": SEQUENCE_LENGTH, "dropout": 0.0},
    "trainer": {"steps": 40, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 4,
                "eval_every": 20, "validation_steps": 4, "log_every": 5},
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tok = SentencePiece(vocabulary_size=1000, max_training_lines=1000)
    tok.train(TextFiles(paths=[TRAIN]).texts(), progress=False)
    directory = str(tmp_path_factory.mktemp("spm"))
    tok.save(directory)
    return directory


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return SentencePiece.load(tokenizer_dir)


def first_batch(objective, tok, raw_length):
    """The first validation batch, and the packed rows it was made from."""
    source = TextFiles(paths=[VALIDATION]).build()
    x, y, weight = next(iter(objective.dataset(source, tok, batch_size=8,
                                               sequence_length=SEQUENCE_LENGTH, training=False)))
    rows = next(iter(packed_batches(source, tok, raw_length, batch_size=8, seed=0,
                                    training=False, shuffle_buffer=0)))
    return ({k: v.numpy() for k, v in x.items()}, y.numpy(), weight.numpy(), rows.numpy())


def test_span_corruption_batches_rebuild_the_text(tok):
    objective = SpanCorruptionObjective()
    raw_length, targets_length = objective.lengths(SEQUENCE_LENGTH)  # 70, 14
    x, y, weight, rows = first_batch(objective, tok, raw_length)
    assert x["encoder_token_ids"].shape == (8, SEQUENCE_LENGTH) and y.shape == (8, targets_length)
    assert x["encoder_padding_mask"].all() and (weight == 1).all()
    assert (x["decoder_token_ids"][:, 0] == tok.special_id("cls")).all()
    np.testing.assert_array_equal(x["decoder_token_ids"][:, 1:], y[:, :-1])
    sentinels = tok.sentinel_ids
    for inputs, targets, row in zip(x["encoder_token_ids"], y, rows):
        assert targets[-1] == tok.special_id("sep") and inputs[-1] == tok.special_id("sep")
        spans, current = {}, None
        for token in targets[:-1]:
            if token in sentinels:
                current = spans[token] = []
            else:
                current.append(token)
        assert list(spans) == sentinels[:len(spans)]  # <extra_id_0>, <extra_id_1>, ...
        rebuilt = [t for token in inputs[:-1] for t in spans.get(token, [token])]
        assert rebuilt == row.tolist()


def test_denoising_batches_hold_the_original_as_targets(tok):
    objective = DenoisingObjective()
    raw_length = SEQUENCE_LENGTH - 2
    x, y, weight, rows = first_batch(objective, tok, raw_length)
    cls_id, sep_id, mask_id = (tok.special_id(r) for r in ("cls", "sep", "mask"))
    assert y.shape == (8, SEQUENCE_LENGTH - 1) and (weight == 1).all()
    np.testing.assert_array_equal(y[:, :-1], rows)  # the original, unpermuted row
    assert (y[:, -1] == sep_id).all()
    np.testing.assert_array_equal(x["decoder_token_ids"][:, 1:], y[:, :-1])
    masked = int(np.ceil(0.3 * raw_length))
    for inputs, mask, row in zip(x["encoder_token_ids"], x["encoder_padding_mask"], rows):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert inputs[0] == cls_id and inputs[n - 1] == sep_id
        source = inputs[1:n - 1]
        kept = source[source != mask_id]
        assert len(kept) == raw_length - masked and (source == mask_id).any()
        assert not Counter(kept.tolist()) - Counter(row.tolist())  # a sub-multiset


def test_refusals_name_the_config_key(tok, tokenizer_dir, tmp_path):
    from kplm.models.encoder_decoder import EncoderDecoder
    without = SentencePiece(vocabulary=tokenizer_dir, num_sentinels=0)
    with pytest.raises(ConfigError, match="needs 3 sentinel tokens.*num_sentinels"):
        SpanCorruptionObjective().dataset(TextFiles(paths=[VALIDATION]).build(), without,
                                          batch_size=2, sequence_length=SEQUENCE_LENGTH)
    short = EncoderDecoder(vocabulary_size=1000, num_layers=1, num_heads=2, hidden_dim=16,
                           intermediate_dim=32, sequence_length=SEQUENCE_LENGTH,
                           decoder_sequence_length=12)
    with pytest.raises(ConfigError, match="backbone.decoder_sequence_length must be >= 14"):
        SpanCorruptionObjective().build_model(short)
    with pytest.raises(ConfigError, match="backbone.decoder_sequence_length must be >= 63"):
        DenoisingObjective().build_model(short)
    with pytest.raises(ConfigError, match="objective.noise_density must be in"):
        SpanCorruptionObjective(noise_density=1.5)
    config = copy.deepcopy(TINY)
    config.update(run_dir=str(tmp_path / "run"), objective={"name": "span_corruption"},
                  backbone={"name": "encoder"})
    with pytest.raises(KplmError, match="span_corruption"):
        pretrain(config, echo=None, progress=False)


@pytest.fixture(scope="module", params=["span_corruption", "denoising"])
def run(request, tokenizer_dir, tmp_path_factory):
    config = copy.deepcopy(TINY)
    config.update(run_dir=str(tmp_path_factory.mktemp(request.param) / "run"),
                  tokenizer={"name": "sentencepiece", "vocabulary": tokenizer_dir},
                  objective={"name": request.param})
    return config, pretrain(config, echo=None, progress=False)


def test_loss_goes_down_on_real_text(run):
    config, metrics = run
    assert metrics["steps"] == 40
    first, last = metrics["first_logged_loss"], metrics["train"]["loss"]
    assert last < first - 1.0, (first, last)
    assert metrics["validation"]["loss"] < np.log(metrics["vocabulary_size"]) - 1.0
    assert 0 < metrics["validation"]["accuracy"] <= 1 and metrics["tokens_per_second"] > 0
    from kplm.runs import load_backbone
    backbone = load_backbone(config["run_dir"])
    assert type(backbone).__name__ == "EncoderDecoder" and backbone.vocabulary_size == 1000
