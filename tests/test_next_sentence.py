"""Next-sentence and sentence-order prediction: pair statistics on documents whose sentences say
where they come from, BERT's combined recipe from its config, and the objectives config checks."""
import os

import numpy as np
import pytest

from kplm.config import apply_overrides, load_yaml
from kplm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS, SENTENCES = 200, 9


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory):
    """Documents of sentences ``dD sS .`` (document D, sentence S), and a WordPiece tokenizer
    that maps each word to one token."""
    from kplm.tokenizers.wordpiece import SPECIAL_TOKENS, WordPiece

    root = tmp_path_factory.mktemp("documents")
    words = [f"d{d}" for d in range(DOCUMENTS)] + [f"s{s}" for s in range(SENTENCES)] + ["."]
    (root / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + words) + "\n")
    docs = ["\n".join(f"d{d} s{s} ." for s in range(SENTENCES)) for d in range(DOCUMENTS)]
    (root / "docs.txt").write_text("\n\n".join(docs) + "\n")
    return str(root / "docs.txt"), WordPiece(vocabulary=str(root / "vocab.txt"))


def _pairs(labelled_corpus, mode, count, seed=0):
    """``count`` (A sentences, B sentences, label): sentences as ``(document, index)``."""
    from kplm.data.text_files import TextFiles
    from kplm.objectives.sentence_pairs import segment_pairs

    path, tokenizer = labelled_corpus
    vocab = tokenizer.tokens
    documents = TextFiles(paths=[path], format="documents").build().map(lambda e: e["text"])
    pairs = segment_pairs(documents, tokenizer.build(), target_length=12, mode=mode,
                          seed=seed, training=True, shuffle_buffer=50,
                          partner_buffer=20)

    def sentences(ids):
        words = [vocab[i] for i in ids.numpy()]
        assert len(words) % 3 == 0 and words[2::3] == ["."] * (len(words) // 3), words
        return [(int(d[1:]), int(s[1:])) for d, s in zip(words[0::3], words[1::3])]

    return [(sentences(a), sentences(b), int(label)) for a, b, label in pairs.take(count)]


def _follows(first, second):
    """``second`` is the text right after ``first`` in one document."""
    run = first + second
    return all(d == run[0][0] for d, _ in run) and \
        [s for _, s in run] == list(range(run[0][1], run[0][1] + len(run)))


def test_next_sentence_pairs_are_balanced_and_labelled_correctly(labelled_corpus):
    pairs = _pairs(labelled_corpus, "next_sentence", 400)
    labels = np.array([label for _, _, label in pairs])
    # 1/2 random, less the rare partner from the same document (kept as "next")
    assert abs(labels.mean() - 0.5) < 0.06, labels.mean()
    for a, b, label in pairs:
        assert a and b
        # A is always a run of consecutive sentences of one document
        assert _follows(a, []), a
        if label == 0:
            assert _follows(a, b), (a, b)
        else:
            assert {d for d, _ in b} != {a[0][0]} and _follows(b, []), (a, b)
    # chunks of 4 sentences (12 tokens): A takes 1, 2 or 3 of them, each about equally often
    sizes = np.bincount([len(a) for a, _, _ in pairs], minlength=4)[1:]
    assert sizes.min() > 0.2 * len(pairs), sizes


def test_sentence_order_pairs_swap_half_of_the_time(labelled_corpus):
    pairs = _pairs(labelled_corpus, "sentence_order", 400, seed=3)
    labels = np.array([label for _, _, label in pairs])
    assert abs(labels.mean() - 0.5) < 0.07, labels.mean()
    for a, b, label in pairs:
        assert _follows(b, a) if label else _follows(a, b), (a, b, label)


@pytest.fixture(scope="module")
def bert_recipe_run(tmp_path_factory):
    """configs/bert_tiny_pretrain.yaml (masked LM + NSP), shortened to 60 steps."""
    import kplm

    config = load_yaml(os.path.join(ROOT, "configs", "bert_tiny_pretrain.yaml"))
    run_dir = str(tmp_path_factory.mktemp("bert_recipe"))
    apply_overrides(config, [f"run_dir={run_dir}", "trainer.steps=60",
                             "trainer.eval_every=30", "trainer.log_every=10"])
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        metrics = kplm.pretrain(config, overwrite=True, echo=None, progress=False)
    finally:
        os.chdir(cwd)
    return run_dir, metrics


def test_bert_recipe_trains_both_objectives(bert_recipe_run):
    run_dir, metrics = bert_recipe_run
    train, validation = metrics["train"], metrics["validation"]
    assert metrics["steps"] == 60
    assert train["loss"] < metrics["first_logged_loss"] - 0.5
    for split in (train, validation):
        for key in ("masked_lm_loss", "masked_lm_accuracy", "next_sentence_loss",
                    "next_sentence_accuracy"):
            assert key in split
        # the total is the weighted sum of the parts (weights 1 and 1)
        assert split["loss"] == pytest.approx(
            split["masked_lm_loss"] + split["next_sentence_loss"], rel=1e-3)
    assert 0.3 < train["next_sentence_accuracy"] < 1.0
    assert os.path.exists(os.path.join(run_dir, "backbone.weights.h5"))
    resolved = load_yaml(os.path.join(run_dir, "config.yaml"))
    assert [o["name"] for o in resolved["objectives"]] == ["masked_lm",
                                                           "next_sentence_prediction"]


def test_objectives_config_is_checked():
    from kplm.training.pretrain import PretrainSpec

    base = load_yaml(os.path.join(ROOT, "configs", "albert_tiny_sop.yaml"))

    def refused(**changes):
        with pytest.raises(ConfigError) as error:
            PretrainSpec({**base, **changes})
        return str(error.value)

    assert "'objective' and 'objectives'" in refused(objective={"name": "masked_lm"})
    assert "objectives[1].weight" in refused(
        objectives=["masked_lm", {"name": "next_sentence_prediction", "weight": -1}])
    assert "objectives[0].mask_rat" in refused(objectives=[{"name": "masked_lm",
                                                            "mask_rat": 0.2}])
    assert "objectives[1].name" in refused(objectives=["masked_lm", "next_sentences"])
    spec = PretrainSpec({**base, "objectives": ["next_sentence_prediction",
                                                "sentence_order_prediction"]})
    from kplm.training.pretrain import build_objective
    with pytest.raises(ConfigError, match="both build the training rows"):
        build_objective(spec)
