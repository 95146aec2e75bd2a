"""Hugging Face T5 checkpoints (v1.0: ReLU, tied embeddings; v1.1: gated-GELU, separate LM head)
into kplm's ``T5EncoderDecoder``: hidden states, logits and greedy generation (cached and
uncached) equal transformers' (``tests/reference/tiny_t5*.npz``), the tokenizer's ids and
sentinels equal transformers', and the checkpoint continues pretraining with span corruption
and fine-tunes as seq2seq."""
import hashlib
import os

import numpy as np
import pytest

from conftest import ROOT, assert_greedy_ids_match

REFERENCE = os.path.join(ROOT, "tests", "reference")
SPIECE = os.path.join(REFERENCE, "tiny_t5_spiece.model")
VARIANTS = {"v1_0": (False, "tiny_t5.npz"), "v1_1": (True, "tiny_t5_v1_1.npz")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from kplm.testing import write_tiny_hf_checkpoint
    out = {}
    for variant, (gated, reference) in VARIANTS.items():
        directory = str(tmp_path_factory.mktemp(variant) / "model")
        write_tiny_hf_checkpoint(directory, "t5", sentencepiece_model=SPIECE, gated=gated)
        ref = np.load(os.path.join(REFERENCE, reference), allow_pickle=False)
        with open(os.path.join(directory, "model.safetensors"), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != str(ref["safetensors_sha256"]):
                pytest.fail("the tiny T5 differs from the reference's (numpy's random numbers "
                            "changed?): rerun tests/reference/make_hf_reference.py t5")
        out[variant] = (directory, ref)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hidden_states_and_logits_equal_transformers(checkpoints, variant):
    from kplm.models.seq2seq_lm import Seq2SeqLM
    from kplm.pretrained.huggingface import load_backbone
    directory, ref = checkpoints[variant]
    backbone = load_backbone(directory)
    assert type(backbone).__name__ == "T5EncoderDecoder"
    assert backbone.gated == VARIANTS[variant][0] and backbone.tie_embeddings != backbone.gated
    inputs = {"encoder_token_ids": ref["encoder_ids"], "encoder_padding_mask": ref["encoder_mask"],
              "decoder_token_ids": ref["decoder_ids"],
              "decoder_padding_mask": np.ones_like(ref["decoder_ids"])}
    out = backbone(inputs)
    mask = ref["encoder_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(out["encoder_sequence_output"])[mask],
                               ref["encoder_hidden"][mask], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["decoder_sequence_output"]), ref["decoder_hidden"],
                               atol=1e-4)
    logits = Seq2SeqLM(backbone)(inputs)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-3)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_transformers(checkpoints, variant, use_cache):
    directory, ref = checkpoints[variant]
    assert_greedy_ids_match(directory, ref, start=0, end=1, pad=0, use_cache=use_cache)


def test_tokenizer_ids_and_sentinels_equal_transformers(checkpoints):
    from kplm.pretrained.huggingface import load_tokenizer
    directory, ref = checkpoints["v1_0"]
    tokenizer = load_tokenizer(directory)
    assert tokenizer.token_to_id("<extra_id_0>") == 299  # the 200 pieces, then 99..0
    ids = tokenizer.build()([str(s) for s in ref["sentences"]])
    ids = ids.to_list() if hasattr(ids, "to_list") else [list(map(int, i)) for i in ids]
    space = tokenizer.token_to_id("\u2581")
    sentinels = set(tokenizer.sentinel_ids)
    for text, got, want in zip(ref["sentences"], ids, ref["sentence_ids"].tolist()):
        want = [i for i in want if i != -1]
        if "<extra_id_" in str(text):
            # A sentinel written in the text: SentencePiece puts the word-start mark before a
            # user-defined piece ("dogs <extra_id_0>" -> "s", "▁", sentinel); transformers
            # splits special tokens out first (no mark). Every other id is the same.
            got = [i for j, i in enumerate(got)
                   if not (i == space and j + 1 < len(got) and got[j + 1] in sentinels)]
        assert got + [tokenizer.special_id("sep")] == want  # T5 appends </s>


@pytest.mark.slow
def test_t5_continues_pretraining_and_fine_tunes(checkpoints, tmp_path):
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain
    directory, _ = checkpoints["v1_1"]
    english = os.path.join(ROOT, "data", "multi30k", "train.en")
    metrics = pretrain({"run_dir": str(tmp_path / "span"), "seed": 0,
                        "backbone": {"name": "hf", "path": directory, "sequence_length": 32},
                        "data": {"train": {"name": "text_files", "paths": [english]}},
                        "objective": {"name": "span_corruption"},
                        "trainer": {"steps": 6, "batch_size": 8, "learning_rate": 1e-3,
                                    "log_every": 3}}, echo=None, progress=False)
    assert np.isfinite(metrics["train"]["loss"])
    run_dir = str(tmp_path / "seq2seq")
    log = []
    finetune({"run_dir": run_dir, "seed": 0, "backbone": {"name": "hf", "path": directory},
              "data": {"train": {"name": "parallel_text", "source": english, "target": english}},
              "head": {"name": "seq2seq"}, "finetune": {"sequence_length": 32},
              "trainer": {"steps": 30, "batch_size": 16, "learning_rate": 3e-3,
                          "log_every": 5}}, echo=log.append, progress=False)
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log if line.startswith("step ")]
    assert losses[-1] < losses[0], losses
    texts = ["A man is sleeping.", "Two dogs play in the snow."]
    out = [p["generated"] for p in FinetunedRun(run_dir).predict([{"source": t} for t in texts])]
    assert all(isinstance(o, str) for o in out)
    # served: the T5 decoder and its caches in a SavedModel, loaded with TensorFlow alone
    from conftest import run_kplm
    from kplm.testing import serve_in_fresh_process
    exported = str(tmp_path / "served")
    result = run_kplm("export", run_dir, "-o", exported)
    assert result.returncode == 0, result.stderr[-2000:]
    assert serve_in_fresh_process(exported, {"source": texts})["generated"] == out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_writes_back_the_same_tensors_and_spiece_model(checkpoints, variant, tmp_path):
    from safetensors.numpy import load_file
    from sentencepiece import sentencepiece_model_pb2 as pb

    from kplm.pretrained.huggingface import load_backbone, load_tokenizer
    from kplm.pretrained.t5 import export_t5
    directory, _ = checkpoints[variant]
    out = str(tmp_path / "exported")
    export_t5(load_backbone(directory), load_tokenizer(directory), out)
    original = load_file(os.path.join(directory, "model.safetensors"))
    exported = load_file(os.path.join(out, "model.safetensors"))
    assert set(original) <= set(exported)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    pieces = [[p.piece for p in pb.ModelProto.FromString(open(path, "rb").read()).pieces]
              for path in (SPIECE, os.path.join(out, "spiece.model"))]
    assert pieces[0] == pieces[1]  # without the sentinels, <s> and <mask> kplm appends
    again = load_backbone(out)  # and it reads back
    assert again.gated == VARIANTS[variant][0]
