"""Shared fixtures: tiny configs on the bundled corpus, one shared pretraining run."""
import copy
import os
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "data", "wikitext2", "train.txt")
VALIDATION = os.path.join(ROOT, "data", "wikitext2", "validation.txt")

TINY = {
    "seed": 0,
    "tokenizer": {"name": "wordpiece", "vocabulary_size": 2000, "max_training_lines": 1500},
    "data": {"train": {"name": "text_files", "paths": [TRAIN]},
             "validation": {"name": "text_files", "paths": [VALIDATION]}},
    "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                 "intermediate_dim": 64, "sequence_length": 64, "dropout": 0.0},
    "objective": {"name": "masked_lm", "whole_word": True},
    "trainer": {"steps": 60, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 5,
                "eval_every": 30, "validation_steps": 4, "log_every": 5},
}


@pytest.fixture
def tiny_config(tmp_path):
    """A fresh copy of the tiny pretraining config, writing into a temporary run_dir."""
    config = copy.deepcopy(TINY)
    config["run_dir"] = str(tmp_path / "run")
    return config


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """One tiny pretraining run shared by the tests that inspect a finished run."""
    from kplm.training.pretrain import pretrain

    config = copy.deepcopy(TINY)
    config["run_dir"] = str(tmp_path_factory.mktemp("pretrained") / "run")
    lines = []
    metrics = pretrain(config, echo=lines.append, progress=False)
    return {"config": config, "run_dir": config["run_dir"], "metrics": metrics, "log": lines}


@pytest.fixture(scope="session")
def tokenizer():
    """A WordPiece vocabulary learned from the start of the bundled corpus (shared)."""
    from kplm.data.text_files import TextFiles
    from kplm.tokenizers.wordpiece import WordPiece

    tok = WordPiece(vocabulary_size=2000, max_training_lines=1500)
    tok.train(TextFiles(paths=[TRAIN]).texts(), progress=False)
    return tok


def run_kplm(*args, env=None, cwd=ROOT, timeout=600):
    """``kplm.testing.run_kplm`` run from the repository root."""
    from kplm.testing import run_kplm as run
    return run(*args, env=env, cwd=cwd, timeout=timeout)


#: Probability (or logit) gap under which an argmax may go either way between two computations
#: of the same logits (another process, batch size or CPU, a SavedModel graph): their last-bit
#: differences are ~1e-6, so 1e-4 leaves a factor 100.
NEAR_TIE = 1e-4


def near_ties(predictions, within=NEAR_TIE):
    """For each ``{"probabilities": {label: p}}`` prediction, whether its two most probable
    labels are within ``within``: a label that another computation may decide the other way.
    Every other label must agree exactly."""
    tops = [sorted(p["probabilities"].values())[-2:] for p in predictions]
    return [second > first - within for second, first in tops]


def assert_greedy_ids_match(directory, ref, *, start, end, pad, use_cache):
    """Greedy generation of the Hugging Face checkpoint in ``directory`` (loaded by kplm)
    equals transformers' ``ref["greedy_ids"]`` up to and including each row's end token."""
    from kplm.models.seq2seq_lm import Seq2SeqLM
    from kplm.pretrained.huggingface import load_backbone
    model = Seq2SeqLM(load_backbone(directory))
    want = ref["greedy_ids"]
    got = model.generate_ids(ref["encoder_ids"], ref["encoder_mask"], start_token_id=start,
                             end_token_id=end, pad_token_id=pad, max_length=want.shape[1],
                             use_cache=use_cache)
    for row, expected in zip(got.tolist(), want.tolist()):
        stop = expected.index(end) + 1 if end in expected else len(expected)
        assert row[:stop] == expected[:stop]
