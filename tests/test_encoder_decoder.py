"""EncoderDecoder backbone and Seq2SeqLM: masks, cached generation, saving."""
import numpy as np
import pytest

START, END, PAD = 1, 2, 0
VOCABULARY = 40


@pytest.fixture(scope="session")
def model():
    """A tiny Seq2SeqLM with larger random weights than the initializer's (whose logits are
    almost flat)."""
    import keras

    from kplm.models.encoder_decoder import EncoderDecoder
    from kplm.models.seq2seq_lm import Seq2SeqLM
    keras.utils.set_random_seed(3)
    backbone = EncoderDecoder(vocabulary_size=VOCABULARY, num_layers=1, num_decoder_layers=2,
                              num_heads=2, hidden_dim=32, intermediate_dim=64,
                              sequence_length=12, decoder_sequence_length=10, dropout=0.0)
    lm = Seq2SeqLM(backbone)
    rng = np.random.default_rng(0)
    for variable in lm.weights:
        noise = rng.normal(0.0, 0.3, variable.shape).astype("float32")
        variable.assign(noise + (1.0 if "gamma" in variable.path else 0.0))
    lm.compile(optimizer="adam", jit_compile=False)
    return lm


@pytest.fixture(scope="session")
def batch():
    rng = np.random.default_rng(1)
    encoder_ids = rng.integers(3, VOCABULARY, (4, 12)).astype("int32")
    encoder_mask = np.ones((4, 12), "int32")
    encoder_mask[1, 7:] = encoder_mask[3, 4:] = 0
    encoder_ids[encoder_mask == 0] = PAD
    decoder_ids = rng.integers(3, VOCABULARY, (4, 10)).astype("int32")
    decoder_ids[:, 0] = START
    return {"encoder_token_ids": encoder_ids, "encoder_padding_mask": encoder_mask,
            "decoder_token_ids": decoder_ids, "decoder_padding_mask": np.ones((4, 10), "int32")}


def logits(model, batch, **changes):
    return np.asarray(model({**batch, **changes}))


def test_backbone_shapes_config_and_registry():
    from kplm.errors import ConfigError
    from kplm.models.encoder_decoder import EncoderDecoder
    from kplm.plugins import get_registry
    assert get_registry().get("backbone", "encoder_decoder") is EncoderDecoder
    assert EncoderDecoder.family == "encoder_decoder"
    backbone = EncoderDecoder(vocabulary_size=30, num_layers=2, hidden_dim=16,
                              intermediate_dim=32, sequence_length=16)
    assert backbone.num_decoder_layers == 2 and backbone.decoder_sequence_length == 16
    assert len(backbone.decoder_transformer_layers) == 2
    assert EncoderDecoder.from_config(backbone.get_config()).count_params() == \
        backbone.count_params()
    with pytest.raises(ConfigError, match="backbone.hidden_dim"):
        EncoderDecoder(vocabulary_size=30, hidden_dim=15, num_heads=2)


def test_masks_causal_and_padding(model, batch):
    base = logits(model, batch)
    assert base.shape == (4, 10, VOCABULARY) and base.dtype == np.float32
    # a padded source token does not matter
    changed = batch["encoder_token_ids"].copy()
    changed[1, 9] = changed[3, 5] = 17
    np.testing.assert_allclose(logits(model, batch, encoder_token_ids=changed), base, atol=1e-5)
    # a real one does (for every target position)
    changed[0, 2] = (changed[0, 2] + 1) % VOCABULARY
    assert np.abs(logits(model, batch, encoder_token_ids=changed)[0] - base[0]).max(-1).min() > 1e-4
    # a later target token does not change earlier positions' logits, but changes its own
    changed = batch["decoder_token_ids"].copy()
    changed[:, 6] = (changed[:, 6] + 5) % VOCABULARY
    out = logits(model, batch, decoder_token_ids=changed)
    np.testing.assert_allclose(out[:, :6], base[:, :6], atol=1e-5)
    assert np.abs(out[:, 6] - base[:, 6]).max() > 1e-3


def test_cache_steps_equal_full_forward(model, batch):
    """Feeding the target one token at a time through the caches gives the full pass' logits."""
    from keras import ops
    full = logits(model, batch)
    hidden, encoder_hidden, self_cache, cross_cache = model._build_cache(
        batch["encoder_token_ids"], batch["encoder_padding_mask"], batch["decoder_token_ids"])
    steps = []
    for i in range(10):
        step, _, self_cache, _ = model.call_decoder_with_cache(
            encoder_hidden, batch["encoder_padding_mask"],
            batch["decoder_token_ids"][:, i:i + 1], self_cache, i, cross_cache, None)
        steps.append(ops.convert_to_numpy(step)[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4)


def test_cached_generation_equals_uncached(model, batch):
    """Greedy and beam search give the same ids with and without the caches; so does top-k
    sampling from the same seed (a random model repeats tokens under greedy search: sampling
    makes the sequences varied)."""
    import keras_hub
    args = dict(start_token_id=START, end_token_id=END, pad_token_id=PAD)
    encoder = (batch["encoder_token_ids"], batch["encoder_padding_mask"])
    samplers = [lambda: "greedy", lambda: keras_hub.samplers.BeamSampler(num_beams=3),
                lambda: keras_hub.samplers.TopKSampler(k=8, seed=5)]
    for sampler in samplers:
        outputs = []
        for use_cache in (True, False):
            model.compile(optimizer="adam", jit_compile=False, sampler=sampler())
            outputs.append(model.generate_ids(*encoder, use_cache=use_cache, **args))
        cached, uncached = outputs
        assert cached.shape == (4, 10) and (cached[:, 0] == START).all()
        np.testing.assert_array_equal(cached, uncached)
    assert len(np.unique(cached[:, 1:])) >= 6, cached  # the sampled rows vary
    model.compile(optimizer="adam", jit_compile=False)


def test_keras_file_round_trip(model, batch, tmp_path):
    import keras
    path = str(tmp_path / "seq2seq.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored).__name__ == "Seq2SeqLM"
    assert restored.backbone.num_decoder_layers == 2 and restored.backbone.num_layers == 1
    np.testing.assert_allclose(logits(restored, batch), logits(model, batch), atol=1e-6)
