"""Strategies: two logical CPUs under MirroredStrategy, two worker processes on 127.0.0.1.

TensorFlow's devices and collectives must be configured before TF runs any op, so the
distributed runs happen in subprocesses running this file (``python test_distribute.py MODE``).
The batches give the replicas different numbers of masked tokens: averaging each replica's own
mean (what Keras does with a plain weighted-mean loss) then differs from the one-device run.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kplm.errors import ConfigError

HERE = os.path.abspath(__file__)
VOCAB, LENGTH, PREDICTIONS, BATCH, STEPS = 50, 8, 4, 16, 2
#: Real prediction slots of the rows of a batch: two replicas hold 14 and 24 targets, and
#: their two micro-batches 4 and 10, 8 and 16.
REAL = [1, 1, 1, 1, 1, 1, 4, 4, 2, 2, 2, 2, 4, 4, 4, 4]


def batches(steps=STEPS, batch=BATCH, seed=0):
    """Masked-LM arrays ``(x, y, w)`` whose rows have ``REAL`` real prediction slots each."""
    rng = np.random.default_rng(seed)
    n = steps * batch
    x = {"token_ids": rng.integers(1, VOCAB, (n, LENGTH)).astype("int32"),
         "segment_ids": np.zeros((n, LENGTH), "int32"),
         "padding_mask": np.ones((n, LENGTH), "int32"),
         "mask_positions": np.tile(np.arange(PREDICTIONS, dtype="int32"), (n, 1))}
    y = rng.integers(1, VOCAB, (n, PREDICTIONS)).astype("int32")
    real = np.array(REAL)[np.arange(n) % len(REAL)]
    w = (np.arange(PREDICTIONS)[None, :] < real[:, None]).astype("float32")
    return x, y, w


def train(strategy=None, *, naive=False, accumulation_steps=1, steps=STEPS, batch=BATCH,
          precision=None, jit_compile=False, run_dir=None, data_steps=None, nan_batch=None,
          drop_batch=None, fit=False):
    """Train a tiny MaskedLM with kplm's loop; returns ``(per-step losses, final weights,
    model)``. ``run_dir`` keeps its checkpoints and TensorBoard logs (else a scratch
    directory). ``naive``: a model whose loss kplm's step cannot see the targets of, so each
    replica and micro-batch averages over its own (what a plain weighted-mean loss does);
    ``fit``: Keras' ``fit`` instead of kplm's loop. ``nan_batch``: that batch's first row gets
    a NaN sample weight (a non-finite loss and gradient on the first replica only);
    ``drop_batch``: that batch is left out."""
    import tempfile

    import keras
    import tensorflow as tf

    from kplm.models.encoder import Encoder
    from kplm.models.masked_lm import MaskedLM

    class NaiveMaskedLM(MaskedLM):
        def compute_loss(self, *args, **kwargs):  # its own: kplm's step sees one opaque term
            return super().compute_loss(*args, **kwargs)

    strategy = strategy or tf.distribute.get_strategy()
    if precision:
        keras.mixed_precision.set_global_policy(f"mixed_{precision}")
    try:
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = (NaiveMaskedLM if naive else MaskedLM)(
                Encoder(vocabulary_size=VOCAB, num_layers=1, hidden_dim=16, num_heads=2,
                        intermediate_dim=32, sequence_length=LENGTH, dropout=0.0))
            optimizer = keras.optimizers.Adam(1e-2)
            if precision == "float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer)
        x, y, w = batches(data_steps or steps, batch)
        if nan_batch is not None:
            w[nan_batch * batch, 0] = np.nan
        if drop_batch is not None:
            keep = [i for i in range(len(y)) if i // batch != drop_batch]
            x, y, w = {k: v[keep] for k, v in x.items()}, y[keep], w[keep]
        data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(batch, drop_remainder=True)
        losses = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda step, logs: losses.append(float(logs["loss"])))
        if fit:
            model.fit(data, epochs=1, verbose=0, callbacks=[record])
            return losses, [np.array(v) for v in model.get_weights()], model
        from kplm.training.distribute import is_chief
        from kplm.training.loop import train as train_loop
        from kplm.training.monitor import TrainingMonitor
        scratch = None
        if run_dir is None:
            run_dir = scratch = tempfile.mkdtemp(prefix="kplm-test-")
        write = is_chief(strategy)
        monitor = TrainingMonitor(os.path.join(run_dir, "tensorboard"), batch * LENGTH,
                                  batch, 1, steps, echo=None, write=write)
        try:
            train_loop(model, data.repeat(), steps=steps, eval_every=steps, checkpoint_every=1,
                       checkpoint_dir=os.path.join(run_dir, "checkpoints"), strategy=strategy,
                       accumulation_steps=accumulation_steps, jit_compile=jit_compile,
                       callbacks=[record], monitor=monitor, write=write)
        finally:
            monitor.close()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return losses, [np.array(v) for v in model.get_weights()], model
    finally:
        keras.mixed_precision.set_global_policy("float32")


def max_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(u, "float64") - np.asarray(v, "float64"))))
               for u, v in zip(a, b))


def finetune_under(strategy_name):
    """A 60-step SST-2 fine-tuning run under ``trainer.strategy``; returns its validation
    metrics and those of its saved model evaluated again on one device."""
    import tempfile

    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    root = os.path.dirname(os.path.dirname(HERE))
    sst = {split: {"name": "csv", "paths": [os.path.join(root, "data", "sst2", f"{split}.tsv")],
                   "columns": {"text": "sentence", "label": "label"}}
           for split in ("train", "dev")}
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = os.path.join(scratch, "run")
        metrics = finetune({
            "run_dir": run_dir, "seed": 0,
            "tokenizer": {"name": "wordpiece", "vocabulary_size": 1000},
            "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                         "intermediate_dim": 64, "sequence_length": 32, "dropout": 0.0},
            "data": {"train": sst["train"], "validation": sst["dev"]},
            "head": {"name": "sequence_classification", "pooling": "mean"},
            "trainer": {"steps": 60, "batch_size": 32, "learning_rate": 3e-3,
                        "eval_every": 60, "strategy": strategy_name}}, echo=None, progress=False)
        run = FinetunedRun(run_dir)
        reloaded = run.evaluate(run.source([sst["dev"]["paths"][0]]))
    return metrics["validation"], reloaded


# --- subprocess entry points ------------------------------------------------------------------

def mirrored_main():
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kplm.training.distribute import strategy_for
    mirrored = strategy_for("mirrored")
    one_losses, one_weights, _ = train()
    two_losses, two_weights, _ = train(mirrored)
    naive_losses, naive_weights, _ = train(mirrored, naive=True)
    acc_losses, acc_weights, _ = train(mirrored, accumulation_steps=2)
    # the non-finite gate: batch 1 of 3 is NaN on replica 0 only; both replicas skip its update
    # (with accumulation: the gate's decision is the same code with one micro-batch)
    gate = {}
    for k in (2,):
        _, nan_weights, nan_model = train(mirrored, data_steps=3, nan_batch=1,
                                          accumulation_steps=k)
        _, drop_weights, _ = train(mirrored, data_steps=3, drop_batch=1, accumulation_steps=k)
        gate[k] = {"weights": max_difference(nan_weights, drop_weights),
                   "finite": bool(all(np.all(np.isfinite(w)) for w in nan_weights)),
                   "iterations": int(nan_model.optimizer.iterations.numpy())}
    # resume under the strategy: stop after 2 of 4 steps, then the same call for 4 steps
    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        _, full_weights, _ = train(mirrored, steps=4, run_dir=os.path.join(scratch, "full"))
        train(mirrored, steps=2, data_steps=4, run_dir=os.path.join(scratch, "resumed"))
        _, resumed_weights, _ = train(mirrored, steps=4, run_dir=os.path.join(scratch, "resumed"))
        checkpoints = sorted(os.listdir(os.path.join(scratch, "resumed", "checkpoints")))
        newest = os.path.join(scratch, "resumed", "checkpoints", checkpoints[-1], "ckpt")
        # the input position is in the checkpoint (a plain tf.data iterator): restored in
        # constant time, not found by re-reading the batches done
        iterator_saved = any(name.startswith("iterator")
                             for name, _ in tf.train.list_variables(newest))
    # one batch in, one row out per input row (Keras' predict_on_batch gives each replica's
    # copy of the whole batch)
    from kplm.models.inference import batch_predictor
    x, _, _ = batches(steps=1, batch=5)
    _, _, two_model = train(mirrored, steps=1)
    predicted = batch_predictor(two_model)(x)
    called = np.asarray(two_model(x, training=False))
    print("RESULT " + json.dumps({
        "predicted_rows": len(predicted), "predicted_vs_call": max_difference([predicted],
                                                                              [called]),
        "replicas": mirrored.num_replicas_in_sync, "auto": type(strategy_for("auto")).__name__,
        "one": one_losses, "two": two_losses, "naive": naive_losses,
        "weights": max_difference(one_weights, two_weights),
        "naive_weights": max_difference(one_weights, naive_weights),
        "accumulated": acc_losses,
        "accumulated_weights": max_difference(acc_weights, one_weights),
        "gate": gate,
        "resumed_weights": max_difference(resumed_weights, full_weights),
        "resumed_vs_start": max_difference(resumed_weights, one_weights),
        "resumed_checkpoints": checkpoints, "iterator_saved": iterator_saved}))


def mirrored_finetune_main():
    """A fine-tuning run under ``mirrored`` on two logical CPUs (its own process: TF's
    collectives keep state between the strategies of one process)."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    finetuned, reloaded = finetune_under("mirrored")
    print("RESULT " + json.dumps({"finetuned": finetuned, "reloaded": reloaded}))


def worker_main(index, ports, out):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index}})
    from kplm.training.distribute import is_chief, output_dir, strategy_for
    strategy = strategy_for("auto")  # first thing: before any other TF op
    import tensorflow as tf
    # kplm's loop, each worker given its own run directory (as on two machines): only the
    # chief's may fill up with checkpoints and TensorBoard logs
    losses, weights, model = train(strategy, run_dir=os.path.join(out, f"loop{index}"))
    np.savez(os.path.join(out, f"weights{index}.npz"), *weights)
    # What the trainer does with checkpoints and logs: every worker saves, only the chief's
    # copy lands in the run directory.
    run_dir = os.path.join(out, "run")
    target = output_dir(run_dir, strategy)
    os.makedirs(target, exist_ok=True)
    model.save_weights(os.path.join(target, "model.weights.h5"))
    if target != run_dir:
        shutil.rmtree(target)
    print("RESULT " + json.dumps({"index": index, "chief": is_chief(strategy),
                                  "strategy": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
                                  "replicas": strategy.num_replicas_in_sync, "losses": losses,
                                  "wrote_to_run_dir": target == run_dir}), flush=True)


def run_python(args, env=None, timeout=240):
    env = dict(os.environ, **(env or {}), KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return subprocess.Popen([sys.executable, HERE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def result_of(output):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# --- tests ------------------------------------------------------------------------------------

def result_of_mode(mode, timeout=300):
    """Run this file as ``python test_distribute.py MODE``; its RESULT line."""
    process = run_python([mode])
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{mode} run timed out:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return result_of(output)


@pytest.fixture(scope="module")
def mirrored():
    return result_of_mode("mirrored")


def test_two_logical_cpus_train_like_one_device(mirrored):
    assert mirrored["replicas"] == 2
    np.testing.assert_allclose(mirrored["two"], mirrored["one"], atol=1e-5)
    assert mirrored["weights"] < 1e-5
    # The batches are discriminating: averaging per-replica means gives other losses/weights.
    assert max(abs(a - b) for a, b in zip(mirrored["naive"], mirrored["one"])) > 1e-3
    assert mirrored["naive_weights"] > 1e-4


def test_resume_under_mirrored_equals_the_uninterrupted_run(mirrored):
    # weights, optimizer, step and the data position (a plain tf.data iterator) restored
    assert mirrored["resumed_checkpoints"] == [f"step-{s:08d}" for s in (2, 3, 4)]  # keep 3
    assert mirrored["resumed_weights"] < 1e-6
    assert mirrored["iterator_saved"]
    assert mirrored["resumed_vs_start"] > 1e-3  # it did train past step 2


def test_prediction_under_mirrored_gives_each_row_once(mirrored):
    assert mirrored["predicted_rows"] == 5 and mirrored["predicted_vs_call"] < 1e-6


@pytest.mark.slow  # a whole fine-tuning run: not repeated with the oldest Keras/keras-hub
def test_finetuning_under_mirrored_evaluates_like_one_device():
    """The run's closing evaluation (872 dev sentences, predicted under the strategy) equals
    its saved model's on one device; it used to fail: each prediction came back once per
    replica."""
    result = result_of_mode("mirrored_finetune")
    assert result["finetuned"]["accuracy"] > 0.55  # not one label for every sentence
    # per-replica batches sum in another order than one device's: a prediction within float
    # rounding of a tie (rare: none seen here) may flip, so two of 872 may differ
    finetuned, reloaded = result["finetuned"], result["reloaded"]
    assert finetuned.keys() == reloaded.keys()
    for key in finetuned:
        assert finetuned[key] == pytest.approx(reloaded[key], rel=1e-5,
                                               abs=2 / 872 if key == "accuracy" else 1e-6), key


def test_accumulation_under_mirrored_equals_one_device_batch(mirrored):
    np.testing.assert_allclose(mirrored["accumulated"], mirrored["one"], atol=1e-5)
    assert mirrored["accumulated_weights"] < 1e-5


def test_non_finite_gate_under_mirrored_skips_on_every_replica(mirrored):
    # a NaN on one replica: the all-reduced decision skips the update on both, with
    # accumulation; the weights equal a run that never saw the batch
    assert set(mirrored["gate"]) == {"2"}  # JSON keys
    for k, gate in mirrored["gate"].items():
        assert gate["finite"] and gate["iterations"] == 2, (k, gate)
        assert gate["weights"] < 1e-5, (k, gate)


def test_auto_is_default_without_tf_config_tpu_or_gpus(mirrored):
    assert mirrored["auto"] == "_DefaultDistributionStrategy"


@pytest.mark.slow
def test_two_workers_on_loopback_train_together(tmp_path):
    ports = free_ports(2)
    start = time.perf_counter()
    workers = [run_python(["worker", str(i), str(ports[0]), str(ports[1]), str(tmp_path)])
               for i in range(2)]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("the two workers did not finish in 240 s")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    wall = time.perf_counter() - start
    print(f"two-worker run: {wall:.1f} s")
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    results = [result_of(output) for output in outputs]
    assert [r["replicas"] for r in results] == [2, 2]
    assert all(r["strategy"] for r in results)  # "auto" chose multi_worker
    assert [r["chief"] for r in results] == [True, False]
    assert [r["wrote_to_run_dir"] for r in results] == [True, False]
    assert os.listdir(tmp_path / "run") == ["model.weights.h5"]
    chief, other = tmp_path / "loop0", tmp_path / "loop1"
    assert sorted(os.listdir(chief / "checkpoints")) == [f"step-{s:08d}" for s in (0, 1, 2)]
    assert os.listdir(chief / "tensorboard" / "train")  # event files
    assert not other.exists() or not [f for _, _, fs in os.walk(other) for f in fs]
    weights = [np.load(tmp_path / f"weights{i}.npz") for i in range(2)]
    arrays = [[w[k] for k in sorted(w.files, key=lambda k: int(k.split("_")[1]))]
              for w in weights]
    assert max_difference(*arrays) == 0.0  # the workers hold identical weights
    # ... equal to one process training on the same global batches.
    one_losses, one_weights, _ = train()
    assert max_difference(arrays[0], one_weights) < 1e-5
    np.testing.assert_allclose(results[0]["losses"], one_losses, atol=1e-5)


def test_strategy_names_and_tf_config_are_checked(monkeypatch):
    from kplm.training.distribute import cluster_from_environment, strategy_for
    with pytest.raises(ConfigError, match="must be one of auto, default, mirrored"):
        strategy_for("mirored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        strategy_for("multi_worker")
    for text, message in (("{not json", "not valid JSON"),
                          ('{"cluster": {"worker": []}, "task": {}}', "'cluster' must map"),
                          ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief"}}',
                           "'task.type' must be one of worker"),
                          ('{"cluster": {"worker": ["a:1"]}, '
                           '"task": {"type": "worker", "index": 1}}', "'task.index'")):
        monkeypatch.setenv("TF_CONFIG", text)
        with pytest.raises(ConfigError, match=message) as error:
            cluster_from_environment()
        assert "\n" not in str(error.value)


def test_tpu_without_a_tpu_is_refused_in_one_line(monkeypatch):
    from kplm.training.distribute import strategy_for
    monkeypatch.setenv("TPU_NAME", "no-such-tpu")
    with pytest.raises(ConfigError, match="trainer.strategy tpu: no TPU found") as error:
        strategy_for("tpu")
    assert "\n" not in str(error.value)


def test_chief_and_output_dir(tmp_path):
    from kplm.training.distribute import is_chief, output_dir

    class Resolver:
        def __init__(self, spec, task_type, task_id):
            self.spec, self.task_type, self.task_id = spec, task_type, task_id

        def cluster_spec(self):
            return type("Spec", (), {"as_dict": lambda _: self.spec})()

    def strategy(*args):
        return type("Strategy", (), {"cluster_resolver": Resolver(*args)})()

    workers = {"worker": ["a:1", "b:2"]}
    assert is_chief(None) and is_chief(strategy(workers, "worker", 0))
    assert not is_chief(strategy(workers, "worker", 1))
    with_chief = {"chief": ["c:0"], **workers}
    assert is_chief(strategy(with_chief, "chief", 0))
    assert not is_chief(strategy(with_chief, "worker", 0))
    path = str(tmp_path / "checkpoints")
    assert output_dir(path, strategy(workers, "worker", 0)) == path
    elsewhere = output_dir(path, strategy(workers, "worker", 1))
    assert elsewhere != path and os.path.isdir(elsewhere) and not os.path.exists(path)
    os.rmdir(elsewhere)


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        mirrored_main()
    elif sys.argv[1] == "mirrored_finetune":
        mirrored_finetune_main()
    elif sys.argv[1] == "worker":
        worker_main(int(sys.argv[2]), [int(sys.argv[3]), int(sys.argv[4])], sys.argv[5])
