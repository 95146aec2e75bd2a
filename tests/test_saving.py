""".keras round trips of every task model: same class, weights, outputs and weight tying, a loaded
model that trains, and a MaskedLM loaded in a fresh Python process."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from kplm.models.classifier import SequenceClassifier, SequenceRegressor
from kplm.models.encoder import Encoder
from kplm.models.masked_lm import MaskedLM
from kplm.models.span_extractor import SpanExtractor
from kplm.models.token_classifier import TokenClassifier
from kplm.training.optimizer import build_optimizer
from kplm.training.trainer_config import TrainerConfig

from conftest import ROOT

VOCAB, LENGTH, BATCH, HIDDEN, PREDICTIONS = 60, 8, 2, 16, 3

pytestmark = [  # expected in one-step fits on arrays; the pooler is unused by three of the tasks
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning"),
    pytest.mark.filterwarnings("ignore:Gradients do not exist for variables:UserWarning"),
]


def encoder(**kwargs):
    config = dict(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=HIDDEN,
                  intermediate_dim=32, sequence_length=LENGTH, dropout=0.1)
    return Encoder(**{**config, **kwargs})


def backbone_inputs(rng):
    padding_mask = np.ones((BATCH, LENGTH), "int32")
    padding_mask[1, 5:] = 0  # one padded row: masks and the span extractor's -10000 matter
    token_ids = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32") * padding_mask
    segment_ids = np.zeros((BATCH, LENGTH), "int32")
    segment_ids[:, 4:] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids * padding_mask,
            "padding_mask": padding_mask}


def masked_lm_data(rng):
    x = {**backbone_inputs(rng),
         "mask_positions": np.array([[1, 2, 6], [0, 3, 0]], "int32")}
    y = rng.integers(0, VOCAB, (BATCH, PREDICTIONS)).astype("int32")
    weight = np.array([[1, 1, 1], [1, 1, 0]], "float32")  # a padded prediction slot
    return x, y, weight


def token_data(rng):
    x = backbone_inputs(rng)
    return x, rng.integers(0, 4, (BATCH, LENGTH)).astype("int32"), x["padding_mask"].astype(
        "float32")


# name -> (build the model, make (x, y, sample_weight)). Backbone variations ride along:
# no segment embedding (DistilBERT-like), pre-layer-norm with the approximate GELU.
CASES = {
    "masked_lm": (lambda: MaskedLM(encoder()), masked_lm_data),
    "masked_lm_no_segments": (lambda: MaskedLM(encoder(num_segments=0)), masked_lm_data),
    "sequence_classifier": (
        lambda: SequenceClassifier(encoder(num_segments=0), num_classes=3, dropout=0.2),
        lambda rng: (backbone_inputs(rng), np.array([0, 2], "int32"), None)),
    "sequence_regressor": (
        lambda: SequenceRegressor(encoder()),
        lambda rng: (backbone_inputs(rng), np.array([0.5, -1.0], "float32"), None)),
    "token_classifier": (lambda: TokenClassifier(encoder(), num_labels=4), token_data),
    "span_extractor": (
        lambda: SpanExtractor(encoder(normalize_first=True, activation="gelu_approximate")),
        lambda rng: (backbone_inputs(rng), np.array([[1, 2], [3, 4]], "int32"), None)),
}


def compile_as_kplm(model, **kwargs):
    """What ``kplm.training.finetune``/``pretrain`` do: the task's default loss and metrics, kplm's
    optimizer (AdamW + warmup schedule, backbone variables scaled)."""
    trainer = TrainerConfig(steps=10, learning_rate=1e-3, warmup_steps=0)
    model.compile(optimizer=build_optimizer(trainer, model.backbone.trainable_variables, 0.5),
                  jit_compile=trainer.jit_compile, **kwargs)


def perturb(model, seed=1):
    """Move every weight away from its initial value, deterministically."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        variable.assign(value + rng.normal(0.0, 0.1, value.shape).astype(value.dtype))


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def unique_variables(model):
    return {id(v) for v in model.weights}


def weights_by_path(model):
    return [(v.path, keras.ops.convert_to_numpy(v)) for v in model.weights]


def load(path):
    with warnings.catch_warnings():
        # Tasks compile themselves with their defaults on construction; Keras warns that it does
        # not re-apply the saved compile config to a custom compile(). Expected.
        warnings.filterwarnings("ignore", message=".*compile\\(\\)` was not called")
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(path)


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import kplm.models.encoder  # registers kplm>Encoder, the backbone the task config names
    from kplm.models.masked_lm import MaskedLM

    path, inputs, outputs = sys.argv[1:4]
    model = keras.saving.load_model(path)
    x = dict(np.load(inputs))
    np.save(outputs, keras.ops.convert_to_numpy(model(x, training=False)))
    embedding = model.backbone.token_embedding
    print(json.dumps({
        "class": type(model).__module__ + "." + type(model).__name__,
        "weights": len(model.weights),
        "unique": len({id(v) for v in model.weights}),
        "tied": model.masked_lm_head.token_embedding is embedding,
        "embedding_copies": sum(v is embedding.embeddings for v in model.weights),
    }))
""")


def start_fresh_process(path, x, directory):
    """Load ``path`` in a new Python process, which writes its outputs on ``x`` to ``y.npy``."""
    np.savez(directory / "x.npz", **x)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(directory / "stdout.txt", "w") as stdout, open(directory / "stderr.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", FRESH_PROCESS, path, str(directory / "x.npz"),
             str(directory / "y.npy")], stdout=stdout, stderr=err, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case built, compiled as kplm does, called, perturbed and saved once. The fresh
    process that loads the MaskedLM starts as soon as its file exists and imports TensorFlow
    while the other tests run."""
    directory = tmp_path_factory.mktemp("saving")
    out = {}
    process = None
    for name, (build, data) in CASES.items():
        keras.utils.set_random_seed(0)
        model = build()
        compile_as_kplm(model)
        x, y, sample_weight = data(np.random.default_rng(0))
        initial = predict(model, x)
        perturb(model)
        outputs = predict(model, x)
        assert not np.allclose(initial, outputs, atol=1e-3)  # the perturbation shows
        path = str(directory / f"{name}.keras")
        model.save(path)
        out[name] = {"model": model, "path": path, "x": x, "y": y, "sample_weight": sample_weight,
                     "outputs": outputs}
        if name == "masked_lm":
            process = start_fresh_process(path, x, directory)
            out[name]["process"] = process
    yield out
    if process is not None and process.poll() is None:  # its test was deselected
        process.kill()
        process.wait()


def assert_tied(model):
    """The MLM head projects with the backbone's embedding variable, and holds no copy of it."""
    embedding = model.backbone.token_embedding
    assert model.masked_lm_head.token_embedding is embedding
    shapes = [tuple(v.shape) for v in model.masked_lm_head.weights
              if v is not embedding.embeddings]
    assert (VOCAB, HIDDEN) not in shapes and (HIDDEN, VOCAB) not in shapes, shapes
    assert sum(v is embedding.embeddings for v in model.weights) == 1


@pytest.mark.parametrize("name", list(CASES))
def test_keras_file_round_trip(saved, name):
    case = saved[name]
    model, x = case["model"], case["x"]
    loaded = load(case["path"])

    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert loaded.backbone.get_config() == model.backbone.get_config()
    np.testing.assert_allclose(predict(loaded, x), case["outputs"], rtol=0, atol=1e-6)

    original_weights, loaded_weights = weights_by_path(model), weights_by_path(loaded)
    assert len(loaded.weights) == len(model.weights)
    assert len(unique_variables(loaded)) == len(unique_variables(model))
    assert [p for p, _ in loaded_weights] == [p for p, _ in original_weights]
    for (path, a), (_, b) in zip(original_weights, loaded_weights):
        np.testing.assert_array_equal(b, a, err_msg=path)

    # Loaded tasks come compiled with their own defaults: the same loss kplm trains with.
    assert loaded.compiled
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()

    if isinstance(model, MaskedLM):
        assert_tied(model)
        assert_tied(loaded)
        # A new embedding changes the logits of both models identically: input lookup and
        # output projection read the one variable in the loaded model too.
        new = np.random.default_rng(2).normal(0.0, 0.5, (VOCAB, HIDDEN)).astype("float32")
        before = predict(loaded, x)
        for m in (model, loaded):
            m.backbone.token_embedding.embeddings.assign(new)
        after = predict(loaded, x)
        assert not np.allclose(after, before, atol=1e-3)
        np.testing.assert_allclose(after, predict(model, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_loaded_model_trains_one_step(saved, name):
    case = saved[name]
    loaded = load(case["path"])
    # Eagerly: tracing a train step costs 4-6 s per model here, and a loaded task is rebuilt by
    # the same __init__ as a new one, so graph mode would test nothing saving-specific.
    compile_as_kplm(loaded, run_eagerly=True)
    before = [keras.ops.convert_to_numpy(v) for v in loaded.trainable_weights]
    history = loaded.fit(case["x"], case["y"], sample_weight=case["sample_weight"],
                         batch_size=BATCH, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss), history.history
    assert int(loaded.optimizer.iterations) == 1
    changed = [not np.array_equal(keras.ops.convert_to_numpy(v), b)
               for v, b in zip(loaded.trainable_weights, before)]
    assert sum(changed) >= len(changed) // 2, changed
    if isinstance(loaded, MaskedLM):
        assert_tied(loaded)  # the optimizer updated the one shared variable, not a copy


def test_masked_lm_loads_in_a_fresh_process(saved):
    case, model = saved["masked_lm"], saved["masked_lm"]["model"]
    directory = os.path.dirname(case["path"])
    returncode = case["process"].wait(timeout=120)
    stdout, stderr = (open(os.path.join(directory, f)).read() for f in ("stdout.txt", "stderr.txt"))
    assert returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report == {"class": "kplm.models.masked_lm.MaskedLM", "weights": len(model.weights),
                      "unique": len(unique_variables(model)), "tied": True,
                      "embedding_copies": 1}
    # Another process: the same kernels here, but its thread pool may split work otherwise
    # (last-bit differences); a wrong or untied weight moves the logits by far more than 1e-5.
    np.testing.assert_allclose(np.load(os.path.join(directory, "y.npy")), case["outputs"],
                               rtol=1e-5, atol=1e-6)
