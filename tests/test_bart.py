"""Hugging Face BART checkpoints into kplm's encoder-decoder and back: hidden states and greedy
generation (cached and uncached) equal transformers' (``tests/reference/tiny_bart.npz``), the
export writes the same tensors, and the checkpoint fine-tunes (seq2seq) and continues
pretraining (denoising)."""
import hashlib
import os

import numpy as np
import pytest

from conftest import ROOT, assert_greedy_ids_match, run_kplm

REFERENCE = os.path.join(ROOT, "tests", "reference", "tiny_bart.npz")
MULTI30K = os.path.join(ROOT, "data", "multi30k")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from kplm.testing import write_tiny_hf_checkpoint
    directory = str(tmp_path_factory.mktemp("bart") / "model")
    write_tiny_hf_checkpoint(directory, "bart")
    reference = np.load(REFERENCE, allow_pickle=False)
    with open(os.path.join(directory, "model.safetensors"), "rb") as f:
        written = hashlib.sha256(f.read()).hexdigest()
    if written != str(reference["safetensors_sha256"]):
        pytest.fail("the tiny BART's weights differ from those the reference was computed on "
                    "(numpy's random numbers changed?): rerun "
                    "tests/reference/make_hf_reference.py bart")
    return directory, reference


def test_hidden_states_equal_transformers(checkpoint):
    from kplm.pretrained.huggingface import load_backbone
    directory, ref = checkpoint
    model = load_backbone(directory)
    assert type(model).__name__ == "EncoderDecoder" and model.num_layers == 2
    out = model({"encoder_token_ids": ref["encoder_ids"],
                 "encoder_padding_mask": ref["encoder_mask"],
                 "decoder_token_ids": ref["decoder_ids"],
                 "decoder_padding_mask": ref["decoder_mask"]})
    mask = ref["encoder_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(out["encoder_sequence_output"])[mask],
                               ref["encoder_hidden"][mask], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["decoder_sequence_output"]), ref["decoder_hidden"],
                               atol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_transformers(checkpoint, use_cache):
    directory, ref = checkpoint
    assert_greedy_ids_match(directory, ref, start=0, end=2, pad=1, use_cache=use_cache)


def test_export_writes_back_the_same_tensors(checkpoint, tmp_path):
    from safetensors.numpy import load_file

    from kplm.pretrained.bart import export_bart
    from kplm.pretrained.huggingface import load_backbone, load_tokenizer
    directory, _ = checkpoint
    out = str(tmp_path / "exported")
    export_bart(load_backbone(directory), load_tokenizer(directory), out)
    original = load_file(os.path.join(directory, "model.safetensors"))
    exported = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        if name.endswith("embed_positions.weight"):  # rows 0-1 are never read (offset 2)
            value, exported[name] = value[2:], exported[name][2:]
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = load_tokenizer(out)
    assert again.tokens == load_tokenizer(directory).tokens


@pytest.mark.slow
def test_bart_fine_tunes_as_seq2seq_and_continues_pretraining(checkpoint, tmp_path):
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain
    directory, _ = checkpoint
    train = {"name": "parallel_text", "source": os.path.join(MULTI30K, "train.en"),
             "target": os.path.join(MULTI30K, "train.en")}  # the tiny vocabulary: ASCII only
    run_dir = str(tmp_path / "seq2seq")
    log = []
    finetune({"run_dir": run_dir, "seed": 0, "backbone": {"name": "hf", "path": directory},
              "data": {"train": train}, "head": {"name": "seq2seq"},
              "finetune": {"sequence_length": 32},
              "trainer": {"steps": 30, "batch_size": 16, "learning_rate": 3e-3,
                          "log_every": 5}}, echo=log.append, progress=False)
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log if line.startswith("step ")]
    assert losses[-1] < losses[0], losses
    out = FinetunedRun(run_dir).predict([{"source": "A man is sleeping."}])
    assert isinstance(out[0]["generated"], str)
    result = run_kplm("export", run_dir, "--format", "hf", "-o", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.exists(tmp_path / "hf" / "merges.txt")
    metrics = pretrain({"run_dir": str(tmp_path / "denoising"), "seed": 0,
                        "backbone": {"name": "hf", "path": directory, "sequence_length": 32},
                        "data": {"train": {"name": "text_files",
                                           "paths": [os.path.join(MULTI30K, "train.en")]}},
                        "objective": {"name": "denoising"},
                        "trainer": {"steps": 6, "batch_size": 8, "learning_rate": 1e-3,
                                    "log_every": 3}}, echo=None, progress=False)
    assert np.isfinite(metrics["train"]["loss"])
