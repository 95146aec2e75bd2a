"""``kplm data prepare`` and the ``tfrecord`` source: counts, resume, sharding, training."""
import copy
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from conftest import TRAIN, VALIDATION, run_kplm

TOKENIZER = {"name": "wordpiece", "vocabulary_size": 400, "max_training_lines": 150}


def _lines(path, start, count):
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    return lines[start:start + count]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small training files and a validation file cut from the bundled corpus."""
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for i, count in enumerate([40, 25, 30]):
        path = root / f"part{i}.txt"
        # blank lines in between: they are not examples
        path.write_text("\n".join(_lines(TRAIN, 100 * i, count)) + "\n\n", encoding="utf-8")
        files.append(str(path))
    validation = root / "validation.txt"
    validation.write_text("".join(_lines(VALIDATION, 0, 20)), encoding="utf-8")
    return {"train": files, "validation": str(validation), "root": root}


def _config(corpus, tokenizer=TOKENIZER):
    return {"seed": 0, "tokenizer": dict(tokenizer),
            "data": {"train": {"name": "text_files", "paths": corpus["train"]},
                     "validation": {"name": "text_files", "paths": [corpus["validation"]]}}}


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The corpus prepared by two worker processes, the tokenizer learned on the way."""
    from kplm.data.prepare import prepare

    out = str(tmp_path_factory.mktemp("prepared") / "out")
    log = []
    manifest = prepare(_config(corpus), out, workers=2, echo=log.append, progress=True)
    return {"out": out, "manifest": manifest, "log": log}


def _direct_ids(tokenizer, path):
    """Token ids of each non-blank line of ``path``, tokenized directly."""
    import tensorflow as tf
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return tokenizer.build()(tf.constant(lines))  # eager: lists of ids


def _read_shard(path):
    import tensorflow as tf
    spec = {"ids": tf.io.VarLenFeature(tf.int64)}
    return [tf.sparse.to_dense(tf.io.parse_single_example(r, spec)["ids"]).numpy().tolist()
            for r in tf.data.TFRecordDataset(path)]


def _tokenizer(out):
    from kplm.tokenizers.wordpiece import WordPiece
    return WordPiece.load(os.path.join(out, "tokenizer"))


def test_manifest_counts_and_ids_equal_direct_tokenization(corpus, prepared):
    from kplm import __version__
    from kplm.data.prepare import read_manifest, tokenizer_hash

    out, manifest = prepared["out"], prepared["manifest"]
    assert manifest == read_manifest(out)
    assert manifest["complete"] and manifest["kplm_version"] == __version__
    assert manifest["tokenizer"]["name"] == "wordpiece"
    assert manifest["tokenizer"]["sha256"] == tokenizer_hash(os.path.join(out, "tokenizer"))
    tok = _tokenizer(out)
    train = manifest["splits"]["train"]
    assert [s["file"] for s in train["shards"]] == [f"train-0000{i}.tfrecord" for i in range(3)]
    for shard, path, lines in zip(train["shards"], corpus["train"], [40, 25, 30]):
        direct = _direct_ids(tok, path)
        assert shard["source_file"] == path
        assert shard["records"] == lines == len(direct)
        assert shard["tokens"] == sum(map(len, direct))
        assert _read_shard(os.path.join(out, shard["file"])) == direct  # no specials, same ids
    assert train["records"] == 95
    assert manifest["records"] == 95 + 20
    assert manifest["tokens"] == train["tokens"] + manifest["splits"]["validation"]["tokens"]
    assert sorted(f for f in os.listdir(out) if f.endswith(".tfrecord")) == [
        "train-00000.tfrecord", "train-00001.tfrecord", "train-00002.tfrecord",
        "validation-00000.tfrecord"]
    assert any("with 2 worker(s)" in line for line in prepared["log"])
    assert any(line.startswith("[4/4]") for line in prepared["log"])


def test_source_reads_every_example_in_a_fixed_order(corpus, prepared):
    import tensorflow as tf

    from kplm.data.tfrecord import TFRecordShards

    out = prepared["out"]
    tok = _tokenizer(out)
    source = TFRecordShards(path=out, cycle_length=1)
    source.check()
    assert source.build().element_spec == {"ids": tf.TensorSpec([None], tf.int32)}
    got = [x["ids"].numpy().tolist() for x in source.build()]
    assert got == [ids for path in corpus["train"] for ids in _direct_ids(tok, path)]
    # Interleaved: a different order, the same examples, the same order every time.
    interleaved = TFRecordShards(path=out, cycle_length=3, shuffle_files=True, seed=1)
    first = [tuple(x["ids"].numpy()) for x in interleaved.build()]
    assert first != [tuple(x) for x in got] and sorted(first) == sorted(map(tuple, got))
    assert first == [tuple(x["ids"].numpy()) for x in interleaved.build()]
    validation = [x["ids"].numpy().tolist()
                  for x in TFRecordShards(path=out, split="validation").build()]
    assert validation == _direct_ids(tok, corpus["validation"])


def test_two_input_pipelines_read_disjoint_shards(prepared):
    import tensorflow as tf

    from kplm.data.tfrecord import TFRecordShards

    source = TFRecordShards(path=prepared["out"])
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
                for i in range(2)]
    parts = [source.files_for(c) for c in contexts]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(source.files)
    counts = [sum(1 for _ in source.build(input_context=c)) for c in contexts]
    assert sum(counts) == prepared["manifest"]["splits"]["train"]["records"]
    assert 0 not in counts


def _mtimes(out):
    return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
            if f.endswith(".tfrecord")}


def test_rerun_skips_finished_shards_and_rebuilds_missing_ones(corpus, prepared, tmp_path):
    from kplm.data.prepare import prepare

    out = str(tmp_path / "copy")
    shutil.copytree(prepared["out"], out)
    before = _mtimes(out)
    content = open(os.path.join(out, "train-00001.tfrecord"), "rb").read()
    log = []
    manifest = prepare(_config(corpus), out, workers=1, echo=log.append)
    assert _mtimes(out) == before  # nothing rewritten
    assert any("4 shard(s) already prepared" in line for line in log)
    assert not any("tokenizing" in line or "learning" in line for line in log)
    assert manifest["records"] == prepared["manifest"]["records"]

    # A deleted shard is rebuilt; half-written temporaries (a crash) are ignored and replaced.
    os.remove(os.path.join(out, "train-00001.tfrecord"))
    for name in ("train-00001.tfrecord.tmp", "train-00002.tfrecord.tmp"):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"\x00half a record")
    log = []
    manifest = prepare(_config(corpus), out, workers=1, echo=log.append)
    after = _mtimes(out)
    assert open(os.path.join(out, "train-00001.tfrecord"), "rb").read() == content
    assert {f: t for f, t in after.items() if f != "train-00001.tfrecord"} == \
        {f: t for f, t in before.items() if f != "train-00001.tfrecord"}
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert any(line.startswith("[1/1]") and "train-00001" in line for line in log)
    assert manifest["splits"] == prepared["manifest"]["splits"]

    # A changed source file makes its shard stale.
    changed = str(tmp_path / "changed.txt")
    shutil.copy(corpus["train"][0], changed)
    config = _config(corpus)
    config["data"]["train"]["paths"] = [changed] + corpus["train"][1:]
    prepare(config, out, workers=1, echo=None)
    first = _mtimes(out)["train-00000.tfrecord"]
    with open(changed, "a", encoding="utf-8") as f:
        f.write("one more line\n")
    manifest = prepare(config, out, workers=1, echo=None)
    assert _mtimes(out)["train-00000.tfrecord"] != first
    assert manifest["splits"]["train"]["shards"][0]["records"] == 41


def test_prepare_refuses_bad_output_and_sources(corpus, prepared, tmp_path):
    from kplm.data.prepare import prepare
    from kplm.errors import ConfigError, DataError

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="foreign holds notes.txt, which this command does not"):
        prepare(_config(corpus), str(foreign), echo=None)
    assert (foreign / "notes.txt").exists()
    with pytest.raises(ConfigError, match="--output"):
        prepare(_config(corpus), None, echo=None)
    config = _config(corpus)
    config["data"]["train"] = {"name": "tfrecord", "path": prepared["out"]}
    with pytest.raises(ConfigError, match="data.train.*already token ids"):
        prepare(config, str(tmp_path / "x"), echo=None)
    config = _config(corpus)
    config["data"]["train"]["paths"] = [str(tmp_path / "missing*.txt")]
    with pytest.raises(DataError, match="missing"):
        prepare(config, str(tmp_path / "y"), echo=None)


def test_missing_manifest_and_other_tokenizer_are_refused(prepared, tmp_path):
    from kplm.data.packing import tokenized_texts
    from kplm.data.tfrecord import TFRecordShards, check_tokenizer
    from kplm.errors import ConfigError, DataError
    from kplm.tokenizers.wordpiece import WordPiece

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty} has no manifest.json"):
        TFRecordShards(path=str(empty)).check()

    out = prepared["out"]
    check_tokenizer(out, os.path.join(out, "tokenizer"))  # the same one: fine
    other = _tokenizer(out)
    other.tokens = other.tokens[:-1]  # one token fewer: other ids
    other_dir = str(tmp_path / "other")
    other.save(other_dir)
    with pytest.raises(ConfigError) as e:
        check_tokenizer(out, other_dir)
    message = str(e.value)
    assert "\n" not in message and other_dir in message and out in message
    source = TFRecordShards(path=out)
    with pytest.raises(ConfigError, match="is not the one the shards"):
        source.check_tokenizer(other_dir)
    with pytest.raises(ConfigError, match="the run's tokenizer .* is not the one the shards"):
        source.check_tokenizer(other)
    source.check_tokenizer(_tokenizer(out))
    with pytest.raises(ConfigError, match="is not the one the shards"):  # caught in the pipeline
        tokenized_texts(source.build(), other, source=source)
    with pytest.raises(DataError, match="holds token ids, not text.*tokenizer.vocabulary"):
        source.texts()
    assert isinstance(WordPiece(vocabulary=source.tokenizer_dir).tokens, list)


def test_objectives_take_prepared_ids(prepared):
    """causal_lm batches and masked_lm's packed rows from ids equal those from the text."""
    from kplm.data.tfrecord import TFRecordShards
    from kplm.data.text_files import TextFiles
    from kplm.objectives.causal_lm import CausalLMObjective
    from kplm.objectives.masked_lm import MaskedLMObjective

    out = prepared["out"]
    tok = _tokenizer(out)
    paths = prepared["manifest"]["splits"]["train"]["source"]["paths"]

    def ids():
        return TFRecordShards(path=out, cycle_length=1).build()

    def text():
        return TextFiles(paths=paths).build()

    kwargs = dict(batch_size=4, sequence_length=32, seed=0, training=False)
    a = next(iter(CausalLMObjective().dataset(ids(), tok, **kwargs)))
    b = next(iter(CausalLMObjective().dataset(text(), tok, **kwargs)))
    np.testing.assert_array_equal(a[0]["token_ids"], b[0]["token_ids"])
    np.testing.assert_array_equal(a[1], b[1])
    mlm = MaskedLMObjective()
    rows_a = [r.numpy() for r, _ in mlm.token_rows(ids(), tok, 32, training=False).take(8)]
    rows_b = [r.numpy() for r, _ in mlm.token_rows(text(), tok, 32, training=False).take(8)]
    np.testing.assert_array_equal(rows_a, rows_b)


def test_pretrain_from_prepared_shards(prepared, tmp_path):
    from kplm.training.pretrain import pretrain

    from conftest import TINY

    out = prepared["out"]
    config = copy.deepcopy(TINY)
    config.update(run_dir=str(tmp_path / "run"),
                  tokenizer={"name": "wordpiece", "vocabulary": os.path.join(out, "tokenizer")},
                  data={"train": {"name": "tfrecord", "path": out, "cycle_length": 2},
                        "validation": {"name": "tfrecord", "path": out, "split": "validation"}})
    config["backbone"]["sequence_length"] = 32
    config["trainer"].update(steps=4, batch_size=8, eval_every=2, validation_steps=1,
                             log_every=2, warmup_steps=1)
    metrics = pretrain(config, echo=None, progress=False)
    assert metrics["steps"] == 4 and math.isfinite(metrics["train"]["loss"])
    assert math.isfinite(metrics["validation"]["loss"])
    from kplm.data.tfrecord import check_tokenizer
    check_tokenizer(out, os.path.join(config["run_dir"], "tokenizer"))  # the run's is the same
    # shards damaged after they were written (same sizes, so the manifest check passes): the
    # record checksum fails as they are read, one line naming the data, no run left
    from kplm.errors import DataError
    damaged = str(tmp_path / "damaged")
    shutil.copytree(out, damaged)
    for name in os.listdir(damaged):
        if name.startswith("train-"):
            with open(os.path.join(damaged, name), "r+b") as f:
                f.seek(20)
                f.write(b"\xff" * 8)
    config.update(run_dir=str(tmp_path / "run2"))
    config["data"]["train"]["path"] = damaged
    with pytest.raises(DataError, match=f"^data.train \\({re.escape(damaged)}\\), .*: a "
                                        r"damaged record \(corrupted record at \d+\); ") as e:
        pretrain(config, echo=None, progress=False)
    assert "\n" not in str(e.value) and not os.path.exists(config["run_dir"])


def test_cli_prepare(corpus, prepared, tmp_path):
    import yaml

    config = _config(corpus, {"name": "wordpiece",
                              "vocabulary": os.path.join(prepared["out"], "tokenizer")})
    config["data"] = {"train": {"name": "text_files", "paths": corpus["train"][1:2]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = run_kplm("data", "prepare", str(path), "-o", str(out), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "prepared 25 records" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shards"][0]["tokens"] == \
        prepared["manifest"]["splits"]["train"]["shards"][1]["tokens"]
    # the same tokenizer, so the same hash
    assert manifest["tokenizer"]["sha256"] == prepared["manifest"]["tokenizer"]["sha256"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "a").write_text("x")
    result = run_kplm("data", "prepare", str(path), "-o", str(tmp_path / "foreign"))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "--overwrite" in result.stderr


def test_serialized_examples_equal_protobuf():
    import tensorflow as tf

    from kplm.data.prepare import serialize_examples

    rows = [[0, 1, 127, 128, 300], [], [2 ** 40, 5], [16383, 16384, 2 ** 21]]
    flat = np.array([v for r in rows for v in r], np.int64)
    splits = np.cumsum([0] + [len(r) for r in rows])
    expected = [tf.train.Example(features=tf.train.Features(feature={"ids": tf.train.Feature(
        int64_list=tf.train.Int64List(value=r))})).SerializeToString() for r in rows]
    assert serialize_examples(flat, splits) == expected


def _children(pid):
    """Process ids whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and fields[1] == str(pid):
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_kill_9_of_prepare_ends_its_workers_and_manager(corpus, tmp_path):
    """``kplm data prepare --workers 2`` killed (-9) while its workers start: its worker
    processes and their manager end with it. They used to run on: the workers writing shards
    nobody waited for, the manager for good (holding the caller's stdout open)."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from conftest import ROOT
    config = tmp_path / "prepare.yaml"
    config.write_text(yaml.safe_dump(_config(corpus)), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "kplm", "data", "prepare", str(config), "-o",
         str(tmp_path / "out"), "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    children, deadline = [], time.time() + 240
    while len(children) < 4 and time.time() < deadline:  # resource tracker, manager, 2 workers
        children = _children(process.pid)
        time.sleep(0.05)
    assert len(children) >= 4 and process.poll() is None, children
    process.send_signal(signal.SIGKILL)
    process.wait()
    def running(pid):  # a zombie waiting to be reaped has ended
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    deadline = time.time() + 30
    while time.time() < deadline and any(running(c) for c in children):
        time.sleep(0.2)
    left = [c for c in children if running(c)]
    for c in left:  # the test's own clean-up
        os.kill(c, signal.SIGKILL)
    assert not left, f"still running after the kill: {left}"


def test_a_changed_tokenizer_section_is_learned_again(corpus, prepared, tmp_path):
    """The tokenizer learned by an earlier run is reused only for the same tokenizer section:
    another (here lowercase: false) is learned again, and every shard made with it."""
    from kplm.data.prepare import prepare
    out = str(tmp_path / "copy")
    shutil.copytree(prepared["out"], out)
    log = []
    prepare(_config(corpus), out, workers=1, echo=log.append)
    assert any("reusing the tokenizer" in line for line in log)
    before = _mtimes(out)
    log = []
    manifest = prepare(_config(corpus, {**TOKENIZER, "lowercase": False}), out, workers=1,
                       echo=log.append)
    assert not any("reusing the tokenizer" in line for line in log)
    assert any("learning a wordpiece vocabulary" in line for line in log)
    assert json.load(open(os.path.join(out, "tokenizer", "tokenizer.json")))["lowercase"] is False
    assert manifest["tokenizer"]["sha256"] != prepared["manifest"]["tokenizer"]["sha256"]
    assert all(_mtimes(out)[f] != t for f, t in before.items())


def test_a_tokenizer_setting_the_shards_were_not_made_with_is_refused(prepared, tmp_path):
    """Prepared shards bring their tokenizer; a tokenizer setting of another one in the
    pretraining config would be ignored without a word: refused, naming the key. The settings
    the shards were prepared with (the same config), or none, pass."""
    from kplm.errors import ConfigError
    from kplm.training.pretrain import PretrainJob

    from conftest import TINY

    def job(tokenizer):
        config = copy.deepcopy(TINY)
        config.update(run_dir=str(tmp_path / "run"),
                      data={"train": {"name": "tfrecord", "path": prepared["out"]}})
        config.pop("tokenizer", None)
        if tokenizer is not None:
            config["tokenizer"] = tokenizer
        return PretrainJob(config)

    job(dict(TOKENIZER)).check()  # as prepared
    job(None).check()
    job({"name": "wordpiece"}).check()
    with pytest.raises(ConfigError, match=r"^config key 'tokenizer\.vocabulary_size' \(500\): the "
                                          r"tokenizer the shards in .* bring was made with 400 "
                                          r"\(.*tokenizer_learned_with\.json\)"):
        job({**TOKENIZER, "vocabulary_size": 500}).check()
    with pytest.raises(ConfigError, match=r"^config key 'tokenizer\.lowercase' \(False\)"):
        job({"name": "wordpiece", "lowercase": False}).check()
    with pytest.raises(ConfigError, match=r"^config key 'tokenizer\.name' \('sentencepiece'\): "
                                          r"the shards in .* hold ids of a wordpiece tokenizer"):
        job({"name": "sentencepiece"}).check()
    assert not os.path.exists(tmp_path / "run")
