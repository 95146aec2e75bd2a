"""The electra objective: where tokens are replaced, the labels, the shared embeddings, and a
short run on real text in which the loss goes down."""
import collections
import doctest
import importlib.util
import math
import os
import re
import sys

import numpy as np
import pytest

import kplm

# Run from a kplm checkout without installing this package: use the sources. (No conftest.py
# for this: kplm's own tests import helpers from theirs, and two would clash.)
if importlib.util.find_spec("kplm_electra") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "src"))

from kplm_electra import electra, generator, pretrainer  # noqa: E402
from kplm_electra.electra import ElectraObjective  # noqa: E402
from kplm_electra.pretrainer import TokenReplacer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
TRAIN = os.path.join(ROOT, "data", "wikitext2", "train.txt")
VALIDATION = os.path.join(ROOT, "data", "wikitext2", "validation.txt")
SEQUENCE_LENGTH = 64


def word_vocabulary(path, directory, size=1500, lines=3000):
    """A WordPiece vocabulary of the specials, the characters (bare and ``##``) and the most
    frequent words of the first ``lines`` lines of ``path``: a real vocabulary in a second,
    where learning one takes tens of seconds."""
    counts = collections.Counter()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            if number == lines:
                break
            counts.update(re.findall(r"\w+|[^\w\s]", line.lower()))
    chars = sorted({c for word in counts for c in word})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars
    tokens += ["##" + c for c in chars if c.isalnum()]
    seen = set(tokens)
    for word, _ in counts.most_common():
        if len(tokens) == size:
            break
        if word not in seen:
            seen.add(word)
            tokens.append(word)
    out = os.path.join(directory, "vocab.txt")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return kplm.WordPiece(vocabulary=word_vocabulary(TRAIN, str(tmp_path_factory.mktemp("vocab"))))


def tiny_model(tokenizer, objective=None, **backbone):
    import keras
    keras.utils.set_random_seed(0)
    backbone = kplm.Encoder(**{"vocabulary_size": len(tokenizer.tokens), "num_layers": 1,
                               "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
                               "sequence_length": SEQUENCE_LENGTH, "dropout": 0.0, **backbone})
    return (objective or ElectraObjective()).build_model(backbone)


@pytest.fixture(scope="module")
def batch(tokenizer):
    """One validation batch, its rows before masking, and an untrained model's outputs."""
    objective = ElectraObjective()
    source = kplm.TextFiles(paths=[VALIDATION]).build()
    x, y, w = next(iter(objective.dataset(source, tokenizer, batch_size=8,
                                          sequence_length=SEQUENCE_LENGTH, training=False)))
    rows, _ = next(iter(objective.token_rows(source, tokenizer, SEQUENCE_LENGTH, training=False)
                        .batch(8)))
    model = tiny_model(tokenizer)
    out = model(x, training=False)
    x, y, w, rows = ({k: v.numpy() for k, v in x.items()}, y.numpy(), w.numpy(), rows.numpy())
    masked = np.zeros_like(rows, bool)
    for b, p in zip(*np.nonzero(w)):
        masked[b, x["mask_positions"][b, p]] = True
    return {"x": x, "y": y, "w": w, "original": rows, "masked": masked, "model": model,
            "out": {k: np.asarray(v) for k, v in out.items()},
            "mask_id": tokenizer.special_id("mask")}


def test_replaced_tokens_only_at_masked_positions(batch):
    x, original, masked = batch["x"], batch["original"], batch["masked"]
    seen = batch["out"]["discriminator_ids"]
    assert masked.sum() == batch["w"].sum() > 0  # real slots point at distinct positions
    assert (x["token_ids"][~masked] == original[~masked]).all()  # masking: only chosen tokens
    replaced = seen != original
    assert not replaced[~masked].any()  # the sampled tokens land on the chosen positions only
    # ... on every chosen position: the sampled id, which an untrained generator rarely guesses.
    slots = batch["w"] > 0
    positions = x["mask_positions"][slots]
    rows = np.nonzero(slots)[0]
    assert (seen[rows, positions] == batch["out"]["sampled_ids"][slots]).all()
    assert replaced[masked].mean() > 0.9
    # The generator saw [MASK] at 85 % of the chosen positions (and the original at the rest).
    assert 0.6 < (x["token_ids"][masked] == batch["mask_id"]).mean() < 1.0
    assert (batch["y"][slots] == original[rows, positions]).all()


def test_labels_are_input_differs_from_original(batch):
    x, y, original = batch["x"], batch["y"], batch["original"]
    model = batch["model"]
    labels = np.asarray(model.replaced_labels(x, y, batch["out"]))
    assert labels.sum() > 0
    np.testing.assert_array_equal(labels, batch["out"]["discriminator_ids"] != original)
    # A sample equal to the original is not a replacement: make the generator certain of the
    # original token in even slots and of another token in odd ones.
    vocabulary = model.backbone.vocabulary_size
    target = np.where(np.arange(y.shape[1]) % 2 == 0, y, (y + 7) % vocabulary)
    logits = np.eye(vocabulary, dtype="float32")[target] * 100.0
    sampled, seen = TokenReplacer(seed=0)(logits, x["token_ids"], x["mask_positions"],
                                          x["mask_weights"])
    labels = np.asarray(model.replaced_labels(x, y, {"sampled_ids": sampled}))
    seen = np.asarray(seen)
    np.testing.assert_array_equal(np.asarray(sampled), target)
    np.testing.assert_array_equal(labels, seen != original)
    assert 0 < labels.sum() < batch["masked"].sum()  # the even slots are not replaced


def test_generator_shares_the_discriminator_embeddings(batch):
    import keras
    import tensorflow as tf
    model, x, y, w = batch["model"], batch["x"], batch["y"], batch["w"]
    backbone = model.backbone
    assert model.generator_head.token_embedding is backbone.token_embedding
    shared = [backbone.token_embedding.embeddings,
              backbone.position_embedding.position_embeddings,
              backbone.segment_embedding.embeddings]
    ids = [id(v) for v in model.trainable_variables]
    assert len(ids) == len(set(ids))
    assert {id(v) for v in backbone.trainable_variables} <= set(ids)
    # Beside the backbone's, the model holds no table of its own (one each, used by both).
    own = [v for v in model.trainable_variables
           if id(v) not in {id(b) for b in backbone.trainable_variables}]
    assert own and not {tuple(v.shape) for v in own} & {tuple(v.shape) for v in shared}
    # The generator is narrower, so it projects the shared 32-wide embeddings to its width ...
    assert model.generator.hidden_dim == 8 and tuple(model.generator.projection.kernel.shape) == (
        32, 8)
    # ... and its loss alone trains the shared tables.
    with tf.GradientTape() as tape:
        logits = model(x, training=True)["generator_logits"]
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True) * w)
    for gradient in tape.gradient(loss, shared[:2]):
        assert gradient is not None and float(tf.reduce_max(tf.abs(
            tf.convert_to_tensor(gradient)))) > 0
    # The model rebuilds from its config (the generator sizes are hyperparameters).
    again = type(model).from_config(model.get_config())
    assert again.count_params() == model.count_params()


# Expected from Keras here: the pooler gets no gradient from a token-level objective, a finite
# validation set "runs out", and fit() is told shuffle=True by default.
@pytest.mark.filterwarnings("ignore:Gradients do not exist for variables")
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")
def test_loss_goes_down_on_real_text(tokenizer):
    """60 steps of a 1-layer, 32-wide discriminator on WikiText-2, measured on held-out text.

    The generator samples at temperature 100 (nearly uniform): its replacements are then
    detectable within these few steps. At temperature 1 the generator learns the unigram
    distribution within ~40 steps, and telling its samples apart needs context that such a
    model does not learn in a few hundred steps (measured: the discriminator stays at the
    base-rate entropy for 300 steps). kplm's tests/test_electra_plugin.py runs the defaults
    through ``kplm pretrain``.
    """
    import keras
    objective = ElectraObjective(temperature=100.0, shuffle_buffer=100)
    train = objective.dataset(kplm.TextFiles(paths=[TRAIN]).build(), tokenizer, batch_size=16,
                              sequence_length=SEQUENCE_LENGTH, seed=0)
    validation = objective.dataset(kplm.TextFiles(paths=[VALIDATION]).build(), tokenizer,
                                   batch_size=16, sequence_length=SEQUENCE_LENGTH,
                                   training=False).take(4).cache()
    model = tiny_model(tokenizer, objective)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    before = model.evaluate(validation, verbose=0, return_dict=True)
    history = model.fit(train, steps_per_epoch=30, epochs=2, verbose=0).history
    after = model.evaluate(validation, verbose=0, return_dict=True)
    print("electra tiny run:", before, history, after)
    # Untrained: the generator is uniform over the vocabulary, the discriminator at chance.
    assert before["generator_loss"] == pytest.approx(math.log(len(tokenizer.tokens)), abs=0.1)
    assert before["discriminator_loss"] == pytest.approx(math.log(2), abs=0.05)
    assert after["loss"] < before["loss"] - 15, (before, after)
    assert after["generator_loss"] < before["generator_loss"] - 1.5
    assert history["loss"][-1] < history["loss"][0]
    # The discriminator beats the best constant guess (the replaced share) on held-out text.
    share = after["replaced_share"]
    assert 0.1 < share < 0.16  # 15 % of the tokens chosen, nearly all of them replaced
    entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    assert after["discriminator_loss"] < entropy - 0.1, (after, entropy)
    assert after["discriminator_accuracy"] > 1 - share + 0.01


@pytest.mark.parametrize("options, message", [
    ({"generator_size": 1.5}, "objective.generator_size must be in (0, 1], got 1.5"),
    ({"discriminator_weight": 0.0}, "objective.discriminator_weight must be > 0, got 0.0"),
    ({"generator_num_layers": 0}, "objective.generator_num_layers must be >= 1, got 0"),
    ({"mask_rate": 1.5}, "objective.mask_rate must be in (0, 1), got 1.5"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(kplm.ConfigError, match=re.escape(message)):
        ElectraObjective(**options)


def test_generator_heads_must_divide_its_width(tokenizer):
    objective = ElectraObjective(generator_hidden_dim=12, generator_num_heads=5)
    with pytest.raises(kplm.ConfigError, match=r"generator_num_heads \(5\) must divide .* \(12\)"):
        tiny_model(tokenizer, objective)


def test_registers_through_the_hook():
    registered = {}
    electra.register_objectives(register=lambda name, cls: registered.setdefault(name, cls))
    assert registered == {"electra": ElectraObjective}
    assert issubclass(ElectraObjective, kplm.Objective)
    assert ElectraObjective.families == ("encoder",)


def test_is_not_combined_as_a_masked_lm():
    # kplm's combiner (objectives: [...]) must refuse electra, not train the masked-LM parts it
    # inherits.
    from kplm.objectives.combined import CombinedObjective
    with pytest.raises(kplm.ConfigError, match="cannot be combined"):
        CombinedObjective([ElectraObjective(), kplm.MaskedLMObjective()])


def test_docstring_examples_run():
    for module in (electra, generator, pretrainer):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted and not result.failed, module.__name__
