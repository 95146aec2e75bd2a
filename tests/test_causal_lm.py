"""Causal LM: the decoder is causal, packing keeps the document stream, the loss goes down on real
text, cached generation equals uncached generation, ``kplm generate``, ``.keras`` round trip."""
import copy
import json
import os
import warnings

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from kplm.data.text_files import TextFiles
from kplm.generation import decode, generate, generate_ids, load_generator
from kplm.models.causal_lm import CausalLM
from kplm.models.decoder import Decoder
from kplm.objectives.causal_lm import CausalLMObjective

from conftest import TINY, TRAIN, run_kplm

VOCAB, LENGTH = 50, 16


def tiny_model(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=32,
                  intermediate_dim=64, sequence_length=LENGTH, dropout=0.0)
    return CausalLM(Decoder(**{**config, **kwargs}))


def full_inputs(token_ids):
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}


@pytest.fixture(scope="session")
def clm_run(tmp_path_factory, tokenizer):
    """A tiny decoder pretrained with causal_lm on the bundled corpus (the shared vocabulary)."""
    from kplm.training.pretrain import pretrain

    directory = tmp_path_factory.mktemp("clm")
    tokenizer.save(str(directory / "vocab"))
    config = copy.deepcopy(TINY)
    config.update({
        "run_dir": str(directory / "run"),
        "tokenizer": {"name": "wordpiece", "vocabulary": str(directory / "vocab")},
        "backbone": {"name": "decoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                     "intermediate_dim": 64, "sequence_length": 64, "dropout": 0.0},
        "objective": {"name": "causal_lm"},
    })
    config["trainer"].update({"steps": 40, "eval_every": 20, "validation_steps": 2})
    metrics = pretrain(config, echo=None, progress=False)
    return {"run_dir": config["run_dir"], "metrics": metrics}


@pytest.fixture(scope="module")
def generator(clm_run):
    return load_generator(clm_run["run_dir"])


# --- the model ------------------------------------------------------------------------------
def test_decoder_is_causal_and_the_cache_matches_the_full_pass():
    model = tiny_model()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, (2, LENGTH)).astype("int32")
    logits = keras.ops.convert_to_numpy(model(full_inputs(ids), training=False))
    for t in (0, 5, LENGTH - 1):
        changed = ids.copy()
        changed[:, t] = (changed[:, t] + 7) % VOCAB
        other = keras.ops.convert_to_numpy(model(full_inputs(changed), training=False))
        np.testing.assert_allclose(other[:, :t], logits[:, :t], rtol=0, atol=1e-6)
        assert np.abs(other[:, t:] - logits[:, t:]).max(axis=-1).min() > 1e-4  # every later one

    # One position at a time through the key/value cache gives the full pass's logits.
    cache = model.backbone.build_cache(2, LENGTH)
    steps = []
    for t in range(LENGTH):
        step, _, cache = model.call_with_cache(ids[:, t:t + 1], cache, t)
        steps.append(keras.ops.convert_to_numpy(step))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), logits, rtol=0, atol=1e-5)


def test_logits_are_float32_under_mixed_precision():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_model()
        out = model(full_inputs(np.ones((1, 4), "int32")), training=False)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert model.backbone.compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_keras_file_round_trip(tmp_path):
    model = tiny_model()
    model.compile(optimizer="adam")
    rng = np.random.default_rng(1)
    for v in model.weights:  # move every weight off its initial value
        v.assign(v + rng.normal(0, 0.1, v.shape).astype("float32"))
    x = full_inputs(rng.integers(5, VOCAB, (2, LENGTH)).astype("int32"))
    path = str(tmp_path / "clm.keras")
    model.save(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compile\\(\\)` was not called")
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        loaded = keras.saving.load_model(path)
    assert type(loaded) is CausalLM and type(loaded.backbone) is Decoder
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=0,
                               atol=1e-6)
    embedding = loaded.backbone.token_embedding.embeddings
    assert sum(v is embedding for v in loaded.weights) == 1  # tied: one vocabulary matrix
    assert len(loaded.weights) == len(model.weights)


# --- data -----------------------------------------------------------------------------------
def docs(n):
    return TextFiles(paths=[TRAIN]).build().take(n)


def batches(ds):
    return [(x["token_ids"].numpy(), x["padding_mask"].numpy(), y.numpy(), w.numpy())
            for x, y, w in ds]


def test_packing_keeps_the_document_stream(tokenizer):
    seq, n_docs = 32, 120
    objective = CausalLMObjective(packing="pack")
    ds = objective.dataset(docs(n_docs), tokenizer, batch_size=8, sequence_length=seq,
                           training=False)
    got = batches(ds)
    again = batches(ds)  # validation streams are finite and deterministic
    assert len(again) == len(got)
    assert all(np.array_equal(a, b) for g1, g2 in zip(got, again) for a, b in zip(g1, g2))
    cls_id, sep_id = tokenizer.special_id("cls"), tokenizer.special_id("sep")
    layer = tokenizer.build()
    texts = [ex["text"].numpy().decode() for ex in docs(n_docs)]
    stream = [t for text in texts for t in [cls_id, *layer(text), sep_id]]

    rows = []
    for ids, mask, y, weight in got:
        assert ids.shape[1] == seq and (mask == 1).all()  # full rows, no padding
        np.testing.assert_array_equal(y[:, :-1], ids[:, 1:])  # y is x shifted by one
        np.testing.assert_array_equal(weight, (y != cls_id).astype("float32"))
        rows += [np.concatenate([i, yy[-1:]]) for i, yy in zip(ids, y)]
    assert len(rows) == len(stream) // (seq + 1) and len(rows) > 20
    packed = np.concatenate(rows)
    np.testing.assert_array_equal(packed, stream[:len(packed)])  # order kept, nothing lost
    # Separators: every [SEP] ends a document and the next one starts with [CLS].
    sep_at = np.flatnonzero(packed[:-1] == sep_id)
    assert len(sep_at) > 20 and (packed[sep_at + 1] == cls_id).all()


def test_pad_packing_one_document_per_row(tokenizer):
    seq, n_docs = 32, 40
    ds = CausalLMObjective(packing="pad").dataset(docs(n_docs), tokenizer, batch_size=8,
                                                  sequence_length=seq, training=False)
    got = batches(ds)
    cls_id, sep_id = tokenizer.special_id("cls"), tokenizer.special_id("sep")
    pad_id, layer = tokenizer.special_id("pad"), tokenizer.build()
    expected = [[cls_id, *layer(ex["text"].numpy().decode())[:seq - 1], sep_id]
                for ex in docs(n_docs)]  # [CLS] document [SEP], truncated to seq + 1
    rows = [np.concatenate([i, yy[-1:]]) for b in got for i, yy in zip(b[0], b[2])]
    assert [r[r != pad_id].tolist() for r in rows] == expected  # one document per row, in order
    padded = 0
    for ids, mask, y, weight in got:
        assert (ids[:, 0] == cls_id).all()
        np.testing.assert_array_equal(y[:, :-1], ids[:, 1:])
        pad = y == pad_id
        np.testing.assert_array_equal(weight, (~pad).astype("float32"))  # pads weigh 0
        np.testing.assert_array_equal(mask[:, 1:], 1 - pad[:, :-1])
        for row_y, row_w in zip(y, weight):
            assert row_y[int(row_w.sum()) - 1] == sep_id  # the last real target ends the doc
        padded += int((weight == 0).sum())
    assert padded > 0


def test_training_stream_repeats_with_full_batches(tokenizer):
    ds = CausalLMObjective(shuffle_buffer=50).dataset(docs(30), tokenizer, batch_size=4,
                                                       sequence_length=32, training=True)
    shapes = [y.shape for _, y, _ in ds.take(40)]  # more batches than the 30 lines fill
    assert shapes == [(4, 32)] * 40


# --- training -------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone,objective", [("encoder", "causal_lm"),
                                                ("decoder", "masked_lm")])
def test_objective_and_backbone_family_must_match(tmp_path, backbone, objective):
    from kplm.errors import ConfigError
    from kplm.training.pretrain import pretrain
    config = copy.deepcopy(TINY)
    config.update({"run_dir": str(tmp_path / "run"), "backbone": {"name": backbone},
                   "objective": {"name": objective}})
    with pytest.raises(ConfigError, match=f"objective '{objective}' trains"):
        pretrain(config, echo=None, progress=False)
    assert not os.path.exists(config["run_dir"])


def test_clm_loss_goes_down_on_real_text(clm_run):
    metrics = clm_run["metrics"]
    assert metrics["steps"] == 40
    first, last = metrics["first_logged_loss"], metrics["train"]["loss"]
    assert first == pytest.approx(np.log(metrics["vocabulary_size"]), abs=0.5)  # starts uniform
    assert last < first - 0.8, (first, last)
    assert metrics["validation"]["loss"] < np.log(metrics["vocabulary_size"]) - 0.8
    assert metrics["validation"]["perplexity"] == pytest.approx(
        np.exp(metrics["validation"]["loss"]), rel=0.05)


# --- generation -----------------------------------------------------------------------------
PROMPTS = ["the game was", "in 1990 ,"]


@pytest.fixture(scope="module")
def fixed_generator(tokenizer):
    """A decoder over the shared vocabulary whose weights numpy draws: the same on every CPU,
    unlike a trained model's (training amplifies last-bit differences between CPUs). Exact id
    comparisons of two numerically different paths (cached / uncached) need every sampling
    decision to have a margin far above their logit difference. Measured for PROMPTS: the
    closest decision (two of the top-6 logits under top_k 5) is 3.5e-4 apart, the cached and
    uncached logits differ by < 1e-6; the 40-step trained model had ties 3e-5 apart."""
    keras.utils.set_random_seed(0)
    model = CausalLM(Decoder(vocabulary_size=len(tokenizer.tokens), num_layers=1, num_heads=2,
                             hidden_dim=32, intermediate_dim=64, sequence_length=64,
                             dropout=0.0))
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(0.0, 0.1, v.shape).astype("float32")
                 + (1.0 if "gamma" in v.path else 0.0))
    return model, tokenizer


@pytest.mark.parametrize("sampler,options", [
    ("greedy", {}), ("beam", {"num_beams": 3}), ("top_k", {"k": 5, "seed": 7})])
def test_cached_generation_equals_uncached(fixed_generator, monkeypatch, sampler, options):
    model, tok = fixed_generator
    calls = {True: 0, False: 0}
    original, mode = model.backbone.call_with_cache, []

    def counting(*args, **kwargs):
        calls[mode[-1]] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model.backbone, "call_with_cache", counting)
    out = {}
    for cache in (True, False):  # each call traces its own generate function
        mode.append(cache)
        out[cache] = generate_ids(model, tok, PROMPTS, max_length=24, sampler=sampler,
                                  use_cache=cache, stop=False, **options)
    assert calls[True] > 0 and calls[False] == 0  # uncached: the whole prefix every step
    np.testing.assert_array_equal(out[True]["token_ids"], out[False]["token_ids"])
    if sampler == "greedy":  # the strings too, stopping at the end token
        assert generate(model, tok, PROMPTS, max_length=24, use_cache=False) == generate(
            model, tok, PROMPTS, max_length=24)
    lengths = out[True]["prompt_lengths"]
    assert (lengths > 1).all()
    generated = [row[n:] for row, n in zip(out[True]["token_ids"], lengths)]
    assert all(len(g) == 24 - n for g, n in zip(generated, lengths))
    if sampler == "top_k":  # seeded: the same seed repeats itself, another one differs
        def again(seed):
            return generate_ids(model, tok, PROMPTS, max_length=24, sampler=sampler,
                                use_cache=False, stop=False, k=5, seed=seed)["token_ids"]
        np.testing.assert_array_equal(again(7), out[True]["token_ids"])
        assert not np.array_equal(again(8), out[True]["token_ids"])


def test_generate_strings_stop_at_the_end_token(generator):
    model, tok = generator
    texts = generate(model, tok, PROMPTS, max_length=40)
    out = generate_ids(model, tok, PROMPTS, max_length=40)
    for prompt, text in zip(PROMPTS, texts):
        assert text.startswith(prompt) and len(text) > len(prompt)
    sep = tok.special_id("sep")
    for ids, mask in zip(out["token_ids"], out["padding_mask"]):
        kept = ids[mask.astype(bool)]
        assert sep not in kept[:-1]  # nothing kept after the first [SEP]
    completions = decode(tok, out["token_ids"], out["padding_mask"], out["prompt_lengths"])
    assert [c in t for c, t in zip(completions, texts)] == [True, True]


def test_cli_generate(clm_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("it was\n\n")
    result = run_kplm("generate", clm_run["run_dir"], "--prompt", "the game was", "--file",
                      str(prompts), "--sampler", "top_k", "--top-k", "5", "--seed", "3",
                      "--max-length", "20")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["prompt"] for line in lines] == ["the game was", "it was"]
    for line in lines:
        assert line["text"].startswith(line["prompt"])
        assert line["completion"] in line["text"]


def test_cli_generate_refuses_an_encoder_run(tmp_path, tokenizer):
    from kplm.cli import cli
    from kplm.models.encoder import Encoder
    from kplm.runs import save_backbone

    encoder = Encoder(vocabulary_size=len(tokenizer.tokens), num_layers=1, hidden_dim=16,
                      num_heads=2, intermediate_dim=32, sequence_length=16)
    save_backbone(encoder, str(tmp_path))
    tokenizer.save(str(tmp_path / "tokenizer"))
    result = CliRunner().invoke(cli, ["generate", str(tmp_path), "--prompt", "hello"])
    assert result.exit_code == 1
    assert "needs a decoder run" in result.output and len(result.output.splitlines()) == 1


def test_cli_generate_refuses_max_length_0(clm_run):
    """``--max-length 0`` is a length, not "the default": refused like 1."""
    from kplm.cli import cli
    result = CliRunner().invoke(cli, ["generate", clm_run["run_dir"], "--prompt", "the game",
                                      "--max-length", "0"])
    assert result.exit_code == 1, result.output
    assert "max_length must be within [2, 64]" in result.output and "got 0" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_completion_that_continues_the_prompts_last_word(generator):
    """A first new token that is a ``##`` piece continues the prompt's last word: the
    completion is the rest of the text ("s are"), never the piece itself ("##s are")."""
    from kplm.generation import texts_and_completions
    _, tok = generator
    piece = next(t for t in tok.tokens if t.startswith("##") and len(t) > 2)
    ids = [tok.special_id("cls"), tok.token_to_id("the"), tok.token_to_id("game"),
           tok.token_to_id(piece), tok.token_to_id("was"), tok.special_id("sep"),
           tok.special_id("pad")]
    out = {"token_ids": np.array([ids, ids]), "padding_mask": np.array([[1] * 6 + [0]] * 2),
           "prompt_lengths": np.array([3, 4])}
    texts, completions = texts_and_completions(tok, out)
    assert texts == [f"the game{piece[2:]} was"] * 2
    assert completions == [f"{piece[2:]} was", "was"]


def test_samplers_larger_than_the_vocabulary_or_the_memory_are_refused(generator):
    from kplm.errors import ConfigError
    from kplm.generation import check_sampler_size
    model, tok = generator
    vocabulary = model.backbone.vocabulary_size
    for key, flag in (("k", "top-k"), ("num_beams", "num-beams")):
        with pytest.raises(ConfigError, match=rf"{key} \(--{flag}\) must be at most the "
                                              rf"vocabulary size \({vocabulary:,}\)"):
            generate(model, tok, PROMPTS, max_length=8, sampler="top_k" if key == "k"
                     else "beam", **{key: vocabulary + 1})
    check_sampler_size(model.backbone, {"num_beams": vocabulary}, rows=2, max_length=8)

    class Wide:  # the cache of 4 beams of a model this wide would not fit in 1 GiB
        vocabulary_size, num_layers, hidden_dim = 10**4, 12, 4096
    with pytest.raises(ConfigError, match=r"num_beams \(--num-beams\) 4 would hold about "
                                          r"[\d.]+ GiB of decoder cache for 2 prompt\(s\)"):
        check_sampler_size(Wide(), {"num_beams": 4}, rows=2, max_length=1024, memory=2**30)
    check_sampler_size(Wide(), {"num_beams": 4}, rows=2, max_length=8, memory=2**30)
