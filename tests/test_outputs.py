"""The output rule (kplm.outputs): no user file is ever lost, no half-made output is left.

Refusals are checked through the CLI in-process (click's CliRunner): one ``Error:`` line, exit 1,
and the disk exactly as it was. Cheapest fixtures: a tiny random Hugging Face checkpoint (no
training), fake run / shards directories, and conftest's shared tiny pretraining run."""
import copy
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from kplm.errors import KplmWarning

from conftest import ROOT, TRAIN

SST_TRAIN = os.path.join(ROOT, "data", "sst2", "train.tsv")
_SIBLING = re.compile(r"^\..+\.(tmp|old)-\d+$")


def kplm_cli(*args, input=None):
    from kplm.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def refused(result, *needles):
    """One ``Error:`` line naming each of ``needles``, exit status 1, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(path):
    """Every file and directory under ``path`` with its bytes: to prove nothing changed."""
    found = {}
    for root, dirs, files in os.walk(path):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), path)] = None
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


def no_siblings(parent):
    leftovers = [n for n in os.listdir(parent) if _SIBLING.match(n)]
    assert not leftovers, leftovers


def _reaped_pid():
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny random BERT checkpoint in Hugging Face format: an export input without training."""
    from kplm.testing import write_tiny_hf_checkpoint
    path = str(tmp_path_factory.mktemp("hf") / "bert")
    write_tiny_hf_checkpoint(path, num_layers=1)
    return path


def fake_run(path, extra=None):
    """A directory with the files of a finished kplm run (contents are placeholders)."""
    os.makedirs(os.path.join(path, "tokenizer"))
    for name, text in {"config.yaml": "run_dir: x\n", "metrics.json": "{}\n",
                       "backbone.weights.h5": "weights", "backbone.json": "{}",
                       "tokenizer/vocab.txt": "[PAD]\n", **(extra or {})}.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)
    return path


def test_the_module_example_runs():
    import doctest

    import kplm.outputs
    assert doctest.testmod(kplm.outputs, optionflags=doctest.ELLIPSIS).failed == 0


# --- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["saved_model", "keras_hub", "hf"])
def test_export_refuses_a_directory_holding_a_users_file(tiny_hf, tmp_path, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(kplm_cli("export", tiny_hf, "--format", fmt, "-o", out), out, "notes.txt")
    refused(kplm_cli("export", tiny_hf, "--format", fmt, "-o", out, "--overwrite"),
            out, "notes.txt")
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    no_siblings(tmp_path)


def test_export_never_replaces_a_run_shards_a_checkpoint_or_its_input(pretrained_run, tiny_hf,
                                                                        tmp_path):
    run = pretrained_run["run_dir"]
    checkpoints = os.path.join(run, "checkpoints")
    step = os.path.join(checkpoints, sorted(os.listdir(checkpoints))[-1])
    copied_step = str(tmp_path / "step")
    shutil.copytree(step, copied_step)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    (shards / "train-00000.tfrecord").write_text("records")
    before = {p: snapshot(p) for p in (run, copied_step, str(shards))}
    cases = [
        ([run, "--format", "hf", "-o", run], "a kplm run"),  # the run itself
        ([run, "-o", run], "a kplm run"),  # saved_model, the default format
        ([run, "--format", "keras_hub", "-o", run], "a kplm run"),
        ([tiny_hf, "--format", "hf", "-o", run], "a kplm run"),  # another run
        ([run, "--format", "hf", "-o", shards], "prepared shards"),
        ([run, "--format", "hf", "-o", copied_step], "a checkpoint"),
        ([run, "--format", "hf", "-o", checkpoints], "part of a kplm run"),
        ([run, "--format", "hf", "-o", step], "part of a kplm run"),
        ([run, "--format", "hf", "-o", os.path.dirname(run)], "an input"),  # holds the input
        ([tiny_hf, "--format", "hf", "-o", tiny_hf], "an input"),  # the input itself
    ]
    for args, why in cases:
        for overwrite in ([], ["--overwrite"]):
            refused(kplm_cli("export", *args, *overwrite), args[-1], why)
    assert {p: snapshot(p) for p in before} == before
    for parent in (os.path.dirname(run), run, tmp_path):
        no_siblings(parent)


def test_export_is_complete_or_absent_and_overwrite_replaces_a_previous_export(tiny_hf, tmp_path):
    from kplm.pretrained.huggingface import HF_EXPORT_NAMES
    out = tmp_path / "exports" / "hf"  # its parent is created too
    result = kplm_cli("export", tiny_hf, "--format", "hf", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == sorted(HF_EXPORT_NAMES)
    assert os.listdir(tmp_path / "exports") == ["hf"]  # no temporary sibling left
    first = snapshot(out)
    # the same command again (as after a kill once the export was renamed): nothing to do
    result = kplm_cli("export", tiny_hf, "--format", "hf", "-o", out)
    assert result.exit_code == 0 and "already holds this export" in result.output, result.output
    assert snapshot(out) == first
    # another source, or the same one changed since: refused without --overwrite
    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf, copy)
    refused(kplm_cli("export", copy, "--format", "hf", "-o", out), out, "--overwrite")
    other = tmp_path / "other"
    assert kplm_cli("export", copy, "--format", "hf", "-o", other).exit_code == 0
    os.utime(copy / "config.json", ns=(10**9, 10**9))
    refused(kplm_cli("export", copy, "--format", "hf", "-o", other), other, "--overwrite")
    assert snapshot(out) == first
    (out / "vocab.txt").write_text("edited\n")  # the export is not what it was: refused too
    refused(kplm_cli("export", tiny_hf, "--format", "hf", "-o", out), out, "--overwrite")
    vocab = bytearray(first["vocab.txt"])  # so is an edit that keeps the file's size
    vocab[-2] ^= 1
    (out / "vocab.txt").write_bytes(bytes(vocab))
    refused(kplm_cli("export", tiny_hf, "--format", "hf", "-o", out), out, "--overwrite")
    with open(out / "kplm_export.json", encoding="utf-8") as f:
        assert str(tmp_path) not in f.read()  # no path of this machine in a shipped export
    (out / "vocab.txt").write_bytes(first["vocab.txt"])
    result = kplm_cli("export", tiny_hf, "--format", "hf", "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert snapshot(out) == first  # the same input: the same bytes, in place of the old ones
    assert os.listdir(tmp_path / "exports") == ["hf"]
    preset = tmp_path / "preset"
    preset.mkdir()  # an existing empty directory is fine
    for overwrite in ([], ["--overwrite"]):
        result = kplm_cli("export", tiny_hf, "--format", "keras_hub", "-o", preset, *overwrite)
        assert result.exit_code == 0, result.output
        assert "config.json" in os.listdir(preset)
    no_siblings(tmp_path)


def test_a_failing_export_leaves_nothing(tiny_hf, tmp_path):
    from kplm.outputs import atomic_output
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with atomic_output(str(out)) as tmp:
            open(os.path.join(tmp, "half"), "w").close()
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []  # neither the output, its temporary nor its new parent


def test_leftovers_of_dead_processes_are_cleaned_and_only_those(tmp_path):
    from kplm.outputs import atomic_output
    pid = _reaped_pid()
    (tmp_path / f".out.tmp-{pid}").mkdir()  # an export killed half-way
    (tmp_path / f".other.tmp-{pid}").mkdir()  # another output's: not this writer's business
    (tmp_path / ".out.tmp-notes").write_text("mine")  # not kplm's pattern
    (tmp_path / f".out.tmp-{os.getpid()}x").write_text("mine")
    with atomic_output(str(tmp_path / "out")) as tmp:
        open(os.path.join(tmp, "a"), "w").close()
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["out", f".other.tmp-{pid}", ".out.tmp-notes", f".out.tmp-{os.getpid()}x"])
    # killed between moving a previous output aside and renaming the new one in: put back
    os.rename(tmp_path / "out", tmp_path / f".out.old-{pid}")
    with pytest.raises(Exception, match="is not empty"):
        with atomic_output(str(tmp_path / "out")):
            pass
    assert os.listdir(tmp_path / "out") == ["a"]


def test_in_place_outputs_keep_what_started_and_undo_the_rest(tmp_path):
    """Training runs and prepared shards are resumable, so they are written in place: a replaced
    previous output is put back when the new one never started (in this process, or after it
    was killed); once it has started, the previous one waits aside until the new one is
    complete, whatever kills or errors come between, and only then is deleted."""
    from kplm.outputs import RUN_NAMES, clean_stale, in_place_outputs, open_in_place

    def started(path):
        return os.path.exists(os.path.join(path, "checkpoints"))

    def complete(path):
        return os.path.exists(os.path.join(path, "metrics.json"))

    run = fake_run(str(tmp_path / "run"))
    previous = snapshot(run)
    with pytest.raises(KeyboardInterrupt):
        with in_place_outputs():
            open_in_place(run, replace=True, started=started)
            open(os.path.join(run, "config.yaml"), "w").close()
            raise KeyboardInterrupt
    assert snapshot(run) == previous
    with pytest.raises(RuntimeError), pytest.warns(KplmWarning, match=r"the output .*run "
                                                    r"replaces waits in .*\.run\.old-\d+ until "
                                                    r"the new one is complete"):
        with in_place_outputs():
            open_in_place(run, replace=True, started=started)
            os.makedirs(os.path.join(run, "checkpoints"))
            raise RuntimeError("after the first checkpoint: the new run is kept")
    assert os.listdir(run) == ["checkpoints"]
    aside = tmp_path / f".run.old-{os.getpid()}"
    assert snapshot(str(aside)) == previous  # the previous run waits: the new one is not whole
    kept = clean_stale(run, started=started, names=RUN_NAMES, complete=complete)
    assert kept == [str(aside)] and snapshot(str(aside)) == previous  # a resume: still waits
    with in_place_outputs():  # the resumed run ends: the previous one goes
        open_in_place(run, started=started)
        open(os.path.join(run, "metrics.json"), "w").close()
    no_siblings(tmp_path)
    # killed after the first checkpoint of a replacement, then the new run found finished
    pid = _reaped_pid()
    fake_run(str(tmp_path / f".run.old-{pid}"))
    assert clean_stale(run, started=started, names=RUN_NAMES, complete=complete) == []
    no_siblings(tmp_path)
    # a process killed before its first checkpoint: the next writer puts the previous run back
    pid = _reaped_pid()
    fake_run(str(tmp_path / f".run.old-{pid}"))
    shutil.rmtree(run)
    os.makedirs(os.path.join(run, "tokenizer"))
    clean_stale(run, started=started, names=RUN_NAMES)
    assert snapshot(run) == previous
    no_siblings(tmp_path)


# --- predict / evaluate -o: one file ----------------------------------------------------------
def test_predict_and_evaluate_output_files(tmp_path):
    run = tmp_path / "run"  # refused before the run is loaded: any directory will do
    run.mkdir()
    missing = tmp_path / "missing" / "predictions.jsonl"
    refused(kplm_cli("predict", run, "-o", missing, input="a film\n"),
            "folder", tmp_path / "missing", "does not exist")
    refused(kplm_cli("evaluate", run, "--data", SST_TRAIN, "-o", missing),
            "folder", tmp_path / "missing", "does not exist")
    existing = tmp_path / "predictions.jsonl"  # not what these commands write: refused at once
    existing.write_text("mine\n")
    refused(kplm_cli("predict", run, "-o", existing, input="a film\n"), existing, "--overwrite")
    refused(kplm_cli("evaluate", run, "--data", SST_TRAIN, "-o", existing), existing,
            "--overwrite")
    assert existing.read_text() == "mine\n"
    inputs = tmp_path / "in.txt"
    inputs.write_text("a film\n")
    refused(kplm_cli("predict", run, "-i", inputs, "-o", inputs, "--overwrite"), "an input")
    refused(kplm_cli("evaluate", run, "--data", inputs, "-o", inputs, "--overwrite"), "an input")
    assert inputs.read_text() == "a film\n"
    fake_run(str(tmp_path / "other"))
    refused(kplm_cli("evaluate", run, "--data", SST_TRAIN, "-o", tmp_path / "other" /
                     "metrics.json", "--overwrite"), "part of a kplm run")
    assert set(os.listdir(tmp_path)) == {"run", "predictions.jsonl", "in.txt", "other"}


def test_predict_and_evaluate_again_find_their_output_done(tiny_hf, tmp_path):
    """The same command again on its complete ``-o`` file (a kill after the rename) has
    nothing to do; a file holding anything else is refused, and left as it was."""
    from kplm.training.finetune import finetune
    run = str(tmp_path / "run")
    dev = tmp_path / "dev.tsv"
    with open(SST_TRAIN, encoding="utf-8") as f:
        dev.write_text("".join(f.readlines()[:9]), encoding="utf-8")
    finetune({"run_dir": run, "init_from": tiny_hf, "seed": 0,
              "data": {"train": {"name": "csv", "paths": [str(dev)],
                                 "columns": {"text": "sentence", "label": "label"}}},
              "head": {"name": "sequence_classification"},
              "trainer": {"steps": 2, "batch_size": 4, "eval_every": 2}},
             echo=None, progress=False)
    written = {"predict": tmp_path / "predictions.jsonl", "evaluate": tmp_path / "scores.json"}
    commands = {"predict": (["predict", run, "-o", written["predict"]], "a film\nbad\n"),
                "evaluate": (["evaluate", run, "--data", dev, "-o", written["evaluate"]], None)}
    for name, (args, text) in commands.items():
        assert kplm_cli(*args, input=text).exit_code == 0
        first = snapshot(tmp_path)
        # a kill just before the rename of a --overwrite leaves its temporary: cleaned
        stale = tmp_path / f".{written[name].name}.tmp-{_reaped_pid()}.{written[name].name}"
        stale.write_text(written[name].read_text())
        again = kplm_cli(*args, input=text)
        assert again.exit_code == 0, again.output
        assert snapshot(tmp_path) == first
        assert f"already holds these {'predictions' if name == 'predict' else 'metrics'}: " \
            "nothing to do" in again.output
        written[name].write_text("mine\n")
        refused(kplm_cli(*args, input=text), written[name], "--overwrite")
        assert written[name].read_text() == "mine\n"


# --- tokenizer train, data prepare ------------------------------------------------------------
def test_tokenizer_train_again_on_its_complete_output_has_nothing_to_do(tmp_path):
    """A kill after the rename, or a retry loop: the same command finds its tokenizer done;
    another config, changed input files or an edited output still need --overwrite."""
    corpus = tmp_path / "corpus.txt"
    shutil.copy(TRAIN, corpus)
    config = tmp_path / "config.yaml"
    section = {"name": "wordpiece", "vocabulary_size": 300}
    config.write_text(yaml.safe_dump({"data": {"train": {"name": "text_files",
                                                         "paths": [str(corpus)]}},
                                      "tokenizer": section}))
    out = tmp_path / "tok"
    assert kplm_cli("tokenizer", "train", config, "-o", out).exit_code == 0
    first = snapshot(out)
    assert "kplm_tokenizer.json" in first
    again = kplm_cli("tokenizer", "train", config, "-o", out)
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert snapshot(out) == first
    refused(kplm_cli("tokenizer", "train", config, "-o", out, "--set",
                     "tokenizer.vocabulary_size=400"), out, "--overwrite")
    refused(kplm_cli("tokenizer", "train", config, "-o", out, "--kind", "sentencepiece"),
            out, "--overwrite")
    os.utime(corpus, ns=(10**9, 10**9))  # the corpus changed since
    refused(kplm_cli("tokenizer", "train", config, "-o", out), out, "--overwrite")
    assert snapshot(out) == first
    assert kplm_cli("tokenizer", "train", config, "-o", out, "--overwrite").exit_code == 0
    vocab = bytearray((out / "vocab.txt").read_bytes())  # an edited vocabulary: not done
    vocab[-2] ^= 1
    (out / "vocab.txt").write_bytes(bytes(vocab))
    refused(kplm_cli("tokenizer", "train", config, "-o", out), out, "--overwrite")
    # the stamp does not get in the way of using the directory as a vocabulary
    from kplm.plugins import get_registry
    tokenizer = get_registry().get("tokenizer", "wordpiece")(vocabulary=str(out))
    assert len(tokenizer.build()(["the film"])[0]) >= 2
    no_siblings(tmp_path)


def test_tokenizer_train_and_data_prepare_refuse_what_they_did_not_write(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": {"name": "text_files",
                                                         "paths": [TRAIN]}}}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):
        refused(kplm_cli("tokenizer", "train", config, "-o", out, *overwrite), out, "notes.txt")
        refused(kplm_cli("data", "prepare", config, "-o", out, *overwrite), out, "notes.txt")
    run = fake_run(str(tmp_path / "run"))
    before = snapshot(run)
    for overwrite in ([], ["--overwrite"]):
        refused(kplm_cli("tokenizer", "train", config, "-o", run, *overwrite), "a kplm run")
        refused(kplm_cli("data", "prepare", config, "-o", run, *overwrite), "a kplm run")
        refused(kplm_cli("tokenizer", "train", config, "-o", os.path.join(run, "tokenizer"),
                         *overwrite), "part of a kplm run")
    refused(kplm_cli("data", "prepare", config, "-o", os.path.dirname(TRAIN), "--overwrite"),
            "an input")
    assert snapshot(run) == before and os.listdir(out) == ["notes.txt"]
    no_siblings(tmp_path)


# --- the training run_dir ---------------------------------------------------------------------
def _write(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_run_dir_that_is_a_file_is_one_line(tiny_config, tmp_path):
    (tmp_path / "file").write_text("mine")
    tiny_config["run_dir"] = str(tmp_path / "file")
    refused(kplm_cli("pretrain", _write(tmp_path, tiny_config)), "run_dir",
            tmp_path / "file", "is a file, expected a directory")
    assert (tmp_path / "file").read_text() == "mine"


def test_run_dir_holding_a_users_file_is_never_replaced(tiny_config, tmp_path):
    from kplm.errors import KplmError
    from kplm.training.pretrain import pretrain
    run = fake_run(tiny_config["run_dir"], {"notes.txt": "mine"})
    before = snapshot(run)
    for overwrite in (False, True):
        with pytest.raises(KplmError, match=r"holds notes.txt, which this command does not"):
            pretrain(tiny_config, overwrite=overwrite, echo=None, progress=False)
    os.remove(os.path.join(run, "config.yaml"))
    os.remove(os.path.join(run, "metrics.json"))  # no longer a run: still not replaced
    del before["config.yaml"], before["metrics.json"]
    with pytest.raises(KplmError, match="holds notes.txt"):
        pretrain(tiny_config, overwrite=True, echo=None, progress=False)
    assert snapshot(run) == before
    no_siblings(tmp_path)


def test_overwrite_replaces_only_a_run_of_the_same_kind(tiny_config, tiny_hf, tmp_path):
    """``kplm finetune --overwrite`` never replaces a pretrained model, nor ``kplm pretrain
    --overwrite`` a fine-tuned one: both are runs, but not of the writer's kind."""
    from kplm.errors import KplmError
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain
    pretrained = fake_run(str(tmp_path / "mlm"),
                          {"config.yaml": "run_dir: x\nobjective: {name: mlm}\n"})
    tuned = fake_run(str(tmp_path / "sst2"), {"head.json": "{}"})
    before = snapshot(tmp_path)
    ft = {"run_dir": pretrained, "init_from": tiny_hf, "seed": 0,
          "data": {"train": {"name": "csv", "paths": [SST_TRAIN],
                             "columns": {"text": "sentence", "label": "label"}}},
          "head": {"name": "sequence_classification"}, "trainer": {"steps": 2, "batch_size": 4}}
    for overwrite in (False, True):
        with pytest.raises(KplmError, match=r"holds a pretraining run; a fine-tuning run never"):
            finetune(ft, overwrite=overwrite, echo=None, progress=False)
        tiny_config["run_dir"] = tuned
        with pytest.raises(KplmError, match=r"holds a fine-tuning run; a pretraining run never"):
            pretrain(tiny_config, overwrite=overwrite, echo=None, progress=False)
    assert snapshot(tmp_path) == before


def _bad_weights(tiny_hf, tmp_path):
    bad = str(tmp_path / "bad_bert")
    shutil.copytree(tiny_hf, bad)
    with open(os.path.join(bad, "model.safetensors"), "wb") as f:
        f.write(b"not safetensors")
    return bad


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(tiny_config, tiny_hf, tmp_path):
    """The backbone's weights are read after run_dir was made: the failure removes it (and the
    parent it created), or puts back the previous run --overwrite was replacing."""
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain
    bad = _bad_weights(tiny_hf, tmp_path)
    config = copy.deepcopy(tiny_config)
    del config["tokenizer"]
    config["backbone"] = {"name": "hf", "path": bad}
    config["run_dir"] = str(tmp_path / "runs" / "mlm")
    with pytest.raises(Exception):
        pretrain(config, echo=None, progress=False)
    assert not os.path.exists(tmp_path / "runs")
    previous = snapshot(fake_run(config["run_dir"]))
    with pytest.raises(Exception):
        pretrain(config, overwrite=True, echo=None, progress=False)
    assert snapshot(config["run_dir"]) == previous
    no_siblings(tmp_path / "runs")

    ft = {"run_dir": str(tmp_path / "ft"), "init_from": bad, "seed": 0,
          "data": {"train": {"name": "csv", "paths": [SST_TRAIN],
                             "columns": {"text": "sentence", "label": "label"}}},
          "head": {"name": "sequence_classification"}, "trainer": {"steps": 2, "batch_size": 4}}
    (tmp_path / "ft").mkdir()  # an existing empty run_dir is left empty
    with pytest.raises(Exception):
        finetune(ft, echo=None, progress=False)
    assert os.listdir(tmp_path / "ft") == []
    no_siblings(tmp_path)


# --- non-finite weights are never written -----------------------------------------------------
def test_a_non_finite_model_is_not_exported(tiny_hf, tmp_path, monkeypatch):
    import numpy as np

    from kplm import runs
    from kplm.finite import NonFiniteWeightsError
    from kplm.pretrained import load_pretrained
    from kplm.pretrained.huggingface import export_bert
    from kplm.pretrained.presets import save_preset
    from kplm.serving import export_saved_model
    backbone, tokenizer = load_pretrained(tiny_hf)
    weight = backbone.weights[0]
    weight.assign(np.full(weight.shape, np.nan, "float32"))
    writers = {"hf": lambda out: export_bert(backbone, tokenizer, out),
               "preset": lambda out: save_preset(backbone, tokenizer, out),
               "run": lambda out: runs.save_backbone(backbone, out)}
    os.makedirs(tmp_path / "run")
    for name, write in writers.items():
        out = str(tmp_path / name)
        with pytest.raises(NonFiniteWeightsError, match=f"not writing {re.escape(out)}") as e:
            write(out)
        assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["run"] and os.listdir(tmp_path / "run") == []

    class NaNRun:  # what FinetunedRun loads, as far as the export looks before writing
        def __init__(self, run_dir):
            self.model, self.head = backbone, type("Head", (), {"serving_endpoint": 1})()
    monkeypatch.setattr("kplm.runs.FinetunedRun", NaNRun)
    with pytest.raises(NonFiniteWeightsError):
        export_saved_model(str(tmp_path / "run"), str(tmp_path / "served"), echo=None)
    assert os.listdir(tmp_path) == ["run"]


def test_overwrite_never_replaces_the_directory_of_the_config_itself(tiny_config, tmp_path):
    """A user's hand-written config.yaml whose run_dir is its own folder: --overwrite would
    have moved the folder aside and replaced the config with kplm's resolved one."""
    exp = tmp_path / "exp"
    exp.mkdir()
    tiny_config["run_dir"] = str(exp)
    config = _write(exp, tiny_config)  # exp/config.yaml: as a kplm run's own would be named
    before = snapshot(exp)
    refused(kplm_cli("pretrain", config, "--overwrite"), "holds an input of this command")
    assert snapshot(exp) == before
    no_siblings(tmp_path)


def test_a_stale_sibling_with_this_process_pid_is_put_back(tmp_path):
    """In a container every start may run as the same PID: an output moved aside by a killed
    process with this PID must be put back, not taken for this command's own."""
    from kplm.outputs import atomic_output, clean_stale
    os.makedirs(tmp_path / f".out.old-{os.getpid()}")
    (tmp_path / f".out.old-{os.getpid()}" / "a").write_text("previous")
    clean_stale(str(tmp_path / "out"))
    assert (tmp_path / "out" / "a").read_text() == "previous"
    (tmp_path / f".out.tmp-{os.getpid()}").mkdir()  # a half-written one: removed
    with atomic_output(str(tmp_path / "new")):
        pass
    clean_stale(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["new", "out"]


def test_a_file_output_keeps_its_suffix_while_written(tmp_path):
    """Keras refuses to save weights to a name that does not end in .weights.h5."""
    import keras

    from kplm.outputs import atomic_output
    layer = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    target = tmp_path / "model.weights.h5"
    with atomic_output(str(target), file=True) as tmp:
        assert tmp.endswith(".weights.h5")
        layer.save_weights(tmp)
    assert target.exists() and os.listdir(tmp_path) == ["model.weights.h5"]


def test_the_csv_logger_writes_only_into_its_run_dir(tiny_config, tmp_path):
    """``callbacks: [{name: csv_logger, filename: ...}]``: the log is a file of the run
    directory; a path elsewhere (a user's file, the training data) is refused before anything
    is written. Keras' CSVLogger, registered as such, used to replace any file it was given."""
    notes = tmp_path / "notes.csv"
    notes.write_text("mine")
    for filename in (str(notes), "../notes.csv", "log.txt", ".csv"):
        tiny_config["callbacks"] = [{"name": "csv_logger", "filename": filename}]
        refused(kplm_cli("pretrain", _write(tmp_path, tiny_config)), "csv_logger",
                f"filename '{filename}'", "expected a file name ending in .csv")
        assert notes.read_text() == "mine" and not os.path.exists(tiny_config["run_dir"])
    from kplm.training.pretrain import pretrain
    tiny_config["callbacks"] = [{"name": "csv_logger", "filename": "log.csv"}]
    tiny_config["trainer"].update(steps=4, eval_every=2, validation_steps=1, log_every=2,
                                 warmup_steps=1)
    pretrain(tiny_config, echo=None, progress=False)
    with open(os.path.join(tiny_config["run_dir"], "log.csv"), encoding="utf-8") as f:
        rows = f.read().splitlines()
    assert rows[0].split(",")[0] == "epoch" and len(rows) == 3  # a row per validation window
    assert notes.read_text() == "mine"


def test_a_checkpoint_holding_nan_is_refused_when_read(tiny_hf, tmp_path):
    """A Hugging Face directory or a run's weights file with a NaN (damaged: kplm never writes
    one) is refused as it is read, naming the file; it used to be predicted with (NaN
    probabilities) or trained on until the first checkpoint blamed the training."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from kplm import runs
    from kplm.errors import KplmError
    from kplm.pretrained import load_pretrained
    from kplm.testing import poison_weights_file
    bad_hf = str(tmp_path / "bad_hf")
    shutil.copytree(tiny_hf, bad_hf)
    tensors = load_file(os.path.join(bad_hf, "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_file(tensors, os.path.join(bad_hf, "model.safetensors"))
    with pytest.raises(KplmError, match=f"^{re.escape(bad_hf)}: weight .* is NaN or inf"):
        load_pretrained(bad_hf)
    backbone, _ = load_pretrained(tiny_hf)
    run = str(tmp_path / "run")
    os.makedirs(run)
    runs.save_backbone(backbone, run)
    weights = os.path.join(run, "backbone.weights.h5")
    poison_weights_file(weights)
    with pytest.raises(KplmError, match=f"^{re.escape(weights)} .*is NaN or inf in the file"):
        runs.load_backbone(run)
