"""The training monitor: window-mean losses, throughput, MFU, TensorBoard keyed by step."""
import numpy as np
import pytest


def _run(tmp_path, name, log_every, **monitor):
    import keras
    import tensorflow as tf

    from kplm.training.monitor import TrainingMonitor
    from kplm.training.loop import train

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).repeat().batch(8)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    out = TrainingMonitor(str(tmp_path / name / "tb"), tokens_per_step=8 * 3,
                          examples_per_step=8, log_every=log_every, total_steps=20, echo=None,
                          **monitor)
    train(model, ds, steps=20, eval_every=10, checkpoint_dir=str(tmp_path / name / "ck"),
          monitor=out)
    out.close()
    return out, model


def test_logged_loss_is_the_mean_of_the_steps_since_the_last_log(tmp_path):
    every, _ = _run(tmp_path, "every", 1)
    windows, _ = _run(tmp_path, "windows", 4)
    per_step = {step: values["loss"] for step, values in every.history}
    assert sorted(per_step) == list(range(1, 21))
    got = {step: values["loss"] for step, values in windows.history}
    # windows end at 4, 8, 12, 16, 20; the window 9-12 covers all four steps although a
    # validation interval ends at step 10.
    assert sorted(got) == [4, 8, 12, 16, 20]
    assert got[4] == pytest.approx(np.mean([per_step[s] for s in (1, 2, 3, 4)]), rel=1e-5)
    assert got[8] == pytest.approx(np.mean([per_step[s] for s in (5, 6, 7, 8)]), rel=1e-5)
    assert got[12] == pytest.approx(np.mean([per_step[s] for s in (9, 10, 11, 12)]), rel=1e-5)
    assert got[20] == pytest.approx(np.mean([per_step[s] for s in (17, 18, 19, 20)]), rel=1e-5)


def test_mfu_is_model_flops_times_throughput_over_peak(tmp_path):
    from kplm.training.monitor import flops_per_token
    monitor, model = _run(tmp_path, "mfu", 5, flops_per_token=1000.0, peak_flops=2e6)
    assert flops_per_token(model) == 6 * 4  # a 3 -> 1 dense layer: 4 parameters
    # The attention term counts the rows' length, not the backbone's position table.
    from types import SimpleNamespace
    backbone = SimpleNamespace(num_layers=2, hidden_dim=8, sequence_length=512)
    assert flops_per_token(model, backbone) == 6 * 4 + 12 * 2 * 8 * 512
    assert flops_per_token(model, backbone, 64) == 6 * 4 + 12 * 2 * 8 * 64
    for _, values in monitor.history[1:]:
        assert values["mfu"] == pytest.approx(1000.0 * values["tokens_per_second"] / 2e6)
        assert values["examples_per_second"] == pytest.approx(values["tokens_per_second"] / 3)
