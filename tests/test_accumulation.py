"""Gradient accumulation and token-count normalisation (kplm.training.step), mixed precision.

The batches give micro-batches different numbers of target tokens (4, 10, 8 and 16 for k=4):
accumulating each micro-batch's own mean would differ from the one big batch.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from test_distribute import BATCH, batches, max_difference, train


@pytest.fixture(scope="module")
def reference():
    """One batch of 16 rows per step, no accumulation."""
    losses, weights, _ = train()
    return losses, weights


def test_four_micro_batches_equal_one_batch(reference):
    losses, weights, model = train(accumulation_steps=4)
    np.testing.assert_allclose(losses, reference[0], atol=1e-5)
    assert max_difference(weights, reference[1]) < 1e-5
    assert int(model.optimizer.iterations) == len(losses)  # one update per global batch
    # The data discriminates: micro-batch means (a plain weighted-mean loss) differ.
    naive_losses, naive_weights, _ = train(accumulation_steps=4, naive=True)
    assert max(abs(a - b) for a, b in zip(naive_losses, reference[0])) > 1e-3
    assert max_difference(naive_weights, reference[1]) > 1e-4


def test_two_micro_batches_under_xla_equal_one_batch(reference):
    losses, weights, _ = train(accumulation_steps=2, jit_compile=True)
    np.testing.assert_allclose(losses, reference[0], atol=1e-5)
    assert max_difference(weights, reference[1]) < 1e-5


def pretrainer_run(accumulation_steps, steps=2):
    """MLM + NSP (two outputs with different target counts) on the masked-LM batches."""
    from kplm.models.encoder import Encoder
    from kplm.models.pretrainer import Pretrainer
    from kplm.objectives.masked_lm import MaskedLMObjective
    from kplm.objectives.next_sentence import NextSentencePredictionObjective
    import tempfile

    from kplm.training.loop import train as train_loop

    keras.utils.set_random_seed(0)
    model = Pretrainer(Encoder(vocabulary_size=50, num_layers=1, hidden_dim=16, num_heads=2,
                               intermediate_dim=32, sequence_length=8, dropout=0.0),
                       [MaskedLMObjective(), NextSentencePredictionObjective()], [1.0, 0.5])
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    x, y, w = batches(steps)
    labels = (np.arange(len(y)) % 3 == 0).astype("int32")
    data = tf.data.Dataset.from_tensor_slices(
        (x, {"masked_lm": y, "next_sentence": labels},
         {"masked_lm": w, "next_sentence": np.ones(len(y), "float32")})).batch(BATCH)
    with tempfile.TemporaryDirectory() as scratch:
        result = train_loop(model, data.repeat(), steps=steps, eval_every=steps,
                            checkpoint_dir=scratch, accumulation_steps=accumulation_steps,
                            validation_data=data)
    return {k: v[-1] for k, v in result.history.items()}, model.get_weights()


def test_accumulation_with_several_outputs():
    one_logs, one_weights = pretrainer_run(1)
    two_logs, two_weights = pretrainer_run(2)
    assert set(two_logs) == set(one_logs)
    assert {"masked_lm_loss", "next_sentence_loss", "val_masked_lm_loss"} <= set(one_logs)
    for key in one_logs:
        assert two_logs[key] == pytest.approx(one_logs[key], abs=1e-5), key
    assert max_difference(one_weights, two_weights) < 1e-5


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains_with_float32_logits_and_loss(precision):
    losses, weights, model = train(precision=precision, accumulation_steps=2)
    assert np.all(np.isfinite(losses)) and all(np.all(np.isfinite(w)) for w in weights)
    assert model.output.dtype == "float32"
    assert model.backbone.dtype_policy.name == f"mixed_{precision}"
    if precision == "float16":  # dynamic loss scaling, one update per accumulated step
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert int(model.optimizer.iterations) == len(losses)
    x, y, w = batches(1)
    value = model.loss(y, model.predict(x, verbose=0), w)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert np.isfinite(float(value))


def test_token_loss_is_a_float32_mean_over_real_tokens():
    from kplm.models.token_loss import TokenLoss
    logits = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float16")
    y = np.array([[1, 2, 3], [4, 0, 1]])
    w = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], "float32")
    value = TokenLoss()(y, logits, w)
    per_token = keras.losses.sparse_categorical_crossentropy(
        y, logits.astype("float32"), from_logits=True)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert float(value) == pytest.approx(float(np.sum(per_token * w) / 3), rel=1e-5)
    assert float(TokenLoss()(y, logits, np.zeros_like(w))) == 0.0  # no targets: no NaN


def test_train_step_refuses_bad_steps_and_batch_sizes():
    from kplm.errors import ConfigError
    from kplm.training.distribute import check_batch_size, strategy_for
    from kplm.training.step import TrainStep
    with pytest.raises(ValueError, match="accumulation_steps must be an integer >= 1"):
        TrainStep(keras.Sequential([keras.layers.Dense(1)]), tf.distribute.get_strategy(), 0)
    with pytest.raises(ConfigError, match=r"multiple of gradient_accumulation_steps x replicas"):
        check_batch_size(6, 4, strategy_for("default"))
