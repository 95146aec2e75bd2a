"""Hostile inputs, one table: every command refuses a bad config, data file, run directory,
checkpoint, plugin setting or prediction input in one line on stderr that names the key, file
or line, exits non-zero, and leaves the disk as it was.

Each row is ``(id, make, exit code, pattern)``: ``make(w)`` writes what the case needs into a
fresh directory (``w``, a ``Workspace``) and returns the command line (plus stdin / env). The
commands run in-process (``click.testing.CliRunner``) on three tiny runs made once for the
module (an encoder, a decoder, a classifier fine-tuned on the encoder; one step each), so most
rows cost milliseconds: they fail at config-check time, before TensorFlow does any work.
"""
import gzip
import json
import os
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner

from kplm import plugins
from kplm.testing import poison_weights_file, tiny_vocabulary

from conftest import run_kplm

#: The most characters the one stderr line may have.
MAX_LINE = 300

TRAIN_TEXT = "".join(f"the film was one of the new year {i} .\n" for i in range(40))
TRAIN_TSV = "sentence\tlabel\n" + "".join(f"the film {i}\t{'pos' if i % 2 else 'neg'}\n"
                                          for i in range(20))
BACKBONE = {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
            "intermediate_dim": 16, "sequence_length": 16, "dropout": 0.0}
TRAINER = {"steps": 1, "batch_size": 2, "eval_every": 1, "log_every": 1}


# --- the tiny runs every row may use ---------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"vocab", "train_txt", "train_tsv", "enc", "clm", "clf"}``: paths of tiny finished runs
    (1 step each) and the files they were made from; rows copy a run before damaging it."""
    from kplm.training.finetune import finetune
    from kplm.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("hostile_runs")
    paths = {"root": str(root)}
    for name, text in (("vocab.txt", "\n".join(tiny_vocabulary()) + "\n"),
                       ("train.txt", TRAIN_TEXT), ("train.tsv", TRAIN_TSV)):
        (root / name).write_text(text)
    paths.update(vocab=str(root / "vocab.txt"), train_txt=str(root / "train.txt"),
                 train_tsv=str(root / "train.tsv"))
    for name, backbone, objective in (("enc", "encoder", "masked_lm"),
                                      ("clm", "decoder", "causal_lm")):
        paths[name] = str(root / name)
        pretrain({"run_dir": paths[name], "seed": 0,
                  "tokenizer": {"name": "wordpiece", "vocabulary": paths["vocab"]},
                  "data": {"train": {"name": "text_files", "paths": [paths["train_txt"]]}},
                  "backbone": {**BACKBONE, "name": backbone}, "objective": {"name": objective},
                  "trainer": TRAINER}, echo=None, progress=False)
    paths["clf"] = str(root / "clf")
    finetune({"run_dir": paths["clf"], "seed": 0, "init_from": paths["enc"],
              "data": {"train": {"name": "csv", "paths": [paths["train_tsv"]],
                                 "columns": {"text": "sentence", "label": "label"}}},
              "head": {"name": "sequence_classification"}, "trainer": TRAINER},
             echo=None, progress=False)
    return paths


class Workspace:
    """A case's fresh directory and the shared runs: writes files and configs for a row."""

    def __init__(self, directory, runs):
        self.dir, self.runs = str(directory), runs
        self.run = os.path.join(self.dir, "run")  # where refused runs must not write

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, data):
        """Write ``data`` (str or bytes) to ``name`` in the case directory; return its path."""
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def copy(self, run, name=None):
        """A copy of the shared run ``run`` (``"enc"``, ``"clm"``, ``"clf"``) to damage."""
        target = self.path(name or run)
        shutil.copytree(self.runs[run], target)
        return target

    def config(self, base, changes=None, name="c.yaml"):
        """``base`` (a dict) with dotted-key ``changes`` (``DELETE`` removes a key), as YAML."""
        config = json.loads(json.dumps(base))
        for key, value in (changes or {}).items():
            node, parts = config, key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            if value is DELETE:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = value
        return self.write(name, yaml.safe_dump(config))

    def pretrain(self, changes=None):
        base = {"run_dir": self.run, "seed": 0,
                "tokenizer": {"name": "wordpiece", "vocabulary": self.runs["vocab"]},
                "data": {"train": {"name": "text_files", "paths": [self.runs["train_txt"]]}},
                "backbone": BACKBONE, "objective": {"name": "masked_lm"}, "trainer": TRAINER}
        return ["pretrain", self.config(base, changes)]

    def finetune(self, changes=None):
        base = {"run_dir": self.run, "seed": 0, "init_from": self.runs["enc"],
                "data": {"train": self.csv(self.runs["train_tsv"])},
                "head": {"name": "sequence_classification"}, "trainer": TRAINER}
        return ["finetune", self.config(base, changes)]

    def data(self, source):
        """A pretraining command line reading ``source`` (a data-source section)."""
        return self.pretrain({"data.train": source})

    @staticmethod
    def csv(path):
        return {"name": "csv", "paths": [path], "columns": {"text": "sentence", "label": "label"}}


DELETE = object()


def tsv_with(line_number, raw, lines=600):
    """A TSV of ``lines`` rows (header first) whose line ``line_number`` is ``raw`` bytes."""
    rows = [b"sentence\tlabel"] + [f"the film number {i} was long and slow\tpos".encode() * 1
                                   for i in range(2, lines + 1)]
    rows[line_number - 1] = raw
    return b"\n".join(rows) + b"\n"


def alias_bomb(key):
    """A ~400-byte YAML whose ``key`` expands to 9**9 strings."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\n{key}: *a8\n"


def truncated(path, keep=3000):
    with open(path, "rb") as f:
        head = f.read(keep)
    with open(path, "wb") as f:
        f.write(head)


def edit_json(path, **changes):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    node = data.get("config", data) if "class_name" in data else data
    node.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def damaged(run, name, how):
    """``make`` for a row on a copy of ``run`` whose file ``name`` is damaged by ``how(path)``
    and then run as ``command(w, run_dir)``."""
    def setup(w):
        directory = w.copy(run)
        how(os.path.join(directory, name))
        return directory
    return setup


def generate_on(setup, *extra):
    return lambda w: ["generate", setup(w), "--prompt", "the film", "--max-length", "6", *extra]


def fifo(path):
    """A named pipe at ``path`` (a stand-in for /dev/null and other non-regular files)."""
    os.mkfifo(path)
    return path


def predict_on(setup, text="the film\n"):
    return lambda w: {"args": ["predict", setup(w)], "input": text}


def write_text(text):
    def how(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return how


def remove(path):
    os.remove(path) if os.path.isfile(path) else shutil.rmtree(path)


def hf_checkpoint(w, **changes):
    """A tiny Hugging Face BERT directory in the case directory, its config.json changed."""
    from kplm.testing import write_tiny_hf_checkpoint
    path = w.path("hf")
    config = write_tiny_hf_checkpoint(path)
    config.update(changes)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return path


def set_module(path, module):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["module"] = module
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


# (id, make, exit code, pattern of the one stderr line)
CASES = [
    # --- configs: YAML itself -----------------------------------------------------------------
    ("yaml-syntax", lambda w: ["pretrain", w.write("c.yaml", "run_dir: x\ntrainer: [1,\n")],
     1, r"c\.yaml:\d+: invalid YAML"),
    ("yaml-alias-bomb-seed", lambda w: ["pretrain", w.write("c.yaml", alias_bomb("seed"))],
     1, r"c\.yaml: the YAML expands to more than 100,000 values"),
    ("yaml-self-alias", lambda w: ["pretrain", w.write("c.yaml", "run_dir: x\nseed: &s [1, *s]\n")],
     1, r"c\.yaml: the YAML is nested more than \d+ levels"),
    ("yaml-deep-nesting", lambda w: ["pretrain", w.write(
        "c.yaml", "seed: " + "[" * 3000 + "]" * 3000)],
     1, r"c\.yaml: invalid YAML: nested more than"),
    ("yaml-duplicate-key", lambda w: ["pretrain", w.write(
        "c.yaml", "run_dir: x\ntrainer: {steps: 2}\ntrainer: {steps: 3}\n")],
     1, r"c\.yaml:3: invalid YAML: key 'trainer' is given twice"),
    ("yaml-python-tag", lambda w: ["pretrain", w.write(
        "c.yaml", "run_dir: x\nseed: !!python/object/apply:os.system ['true']\n")],
     1, r"c\.yaml:2: invalid YAML: could not determine a constructor"),
    ("yaml-not-a-mapping", lambda w: ["pretrain", w.write("c.yaml", "- a\n- b\n")],
     1, r"c\.yaml: a config must be a mapping"),
    ("yaml-invalid-utf8", lambda w: ["pretrain", w.write("c.yaml", b"run_dir: x\nseed: \xff\n")],
     1, r"c\.yaml:2: invalid UTF-8 \(byte 0xff\)"),
    ("yaml-nul-byte", lambda w: ["pretrain", w.write("c.yaml", b"run_dir: x\n\x00\n")],
     1, r"c\.yaml:2: a NUL byte"),
    ("config-missing", lambda w: ["pretrain", w.path("nope.yaml")],
     1, r"nope\.yaml: config file not found"),
    ("config-is-a-directory", lambda w: ["pretrain", w.dir],
     2, r"'CONFIG'.*is a directory.*kplm pretrain --help"),
    # bytes of another encoding on the command line (Python keeps them as lone surrogates)
    ("set-not-utf8", lambda w: w.pretrain() + ["--set", "run_dir=caf\udce9"],
     1, r"--set 'run_dir=caf.*': not valid UTF-8 text"),
    ("set-infinite-epsilon", lambda w: w.pretrain() + ["--set",
                                                      "backbone.layer_norm_epsilon=.inf"],
     1, r"config key 'backbone\.layer_norm_epsilon': expected a finite number, got inf"),
    ("set-without-equals", lambda w: w.pretrain() + ["--set", "trainer.steps"],
     1, r"--set 'trainer\.steps': expected KEY=VALUE"),
    ("set-into-a-value", lambda w: w.pretrain() + ["--set", "seed.x=1"],
     1, r"--set 'seed\.x=1': 'seed' is not a section"),
    ("set-alias-bomb", lambda w: w.pretrain() + ["--set", "seed=&a [1, *a]"],
     1, r"--set seed: the YAML is nested more than"),
    # --- configs: keys and values ---------------------------------------------------------------
    ("unknown-top-key", lambda w: w.pretrain({"trainr": {}}),
     1, r"unknown config key 'trainr'\. Did you mean 'trainer'\?"),
    ("unknown-trainer-key", lambda w: w.pretrain({"trainer.stepz": 3}),
     1, r"unknown config key 'trainer\.stepz'\. Did you mean 'steps'\?"),
    ("run-dir-missing", lambda w: w.pretrain({"run_dir": DELETE}),
     1, r"config key 'run_dir' is required"),
    ("run-dir-a-list", lambda w: w.pretrain({"run_dir": ["a", "b"]}),
     1, r"config key 'run_dir': expected a directory path"),
    ("seed-a-string", lambda w: w.pretrain({"seed": "x" * 5000}),
     1, r"config key 'seed': expected int, got 'xxx.*\.\.\."),
    ("seed-negative", lambda w: w.pretrain({"seed": -1}),
     1, r"config key 'seed' must be in \[0, 2\*\*32\), got -1"),
    ("backbone-sequence-length-0", lambda w: w.pretrain({"backbone.sequence_length": 0}),
     1, r"backbone\.sequence_length must be >= 1, got 0"),
    ("backbone-sequence-length-too-short", lambda w: w.pretrain({"backbone.sequence_length": 2}),
     1, r"backbone\.sequence_length must be >= 3 for objective 'masked_lm', got 2"),
    ("backbone-dropout-1.5", lambda w: w.pretrain({"backbone.dropout": 1.5}),
     1, r"backbone\.dropout must be in \[0, 1\), got 1\.5"),
    ("backbone-heads-do-not-divide", lambda w: w.pretrain({"backbone.num_heads": 3}),
     1, r"backbone\.hidden_dim must be a multiple of backbone\.num_heads \(3\), got 8"),
    ("backbone-num-layers-negative", lambda w: w.pretrain({"backbone.num_layers": -1}),
     1, r"backbone\.num_layers must be >= 1, got -1"),
    ("backbone-hidden-dim-string", lambda w: w.pretrain({"backbone.hidden_dim": "big"}),
     1, r"config key 'backbone\.hidden_dim': expected int, got 'big'"),
    ("backbone-activation-unknown", lambda w: w.pretrain({"backbone.activation": "nope"}),
     1, r"config key 'backbone\.activation': unknown activation 'nope'"),
    ("backbone-epsilon-0", lambda w: w.pretrain({"backbone.layer_norm_epsilon": 0}),
     1, r"backbone\.layer_norm_epsilon must be > 0"),
    ("backbone-name-unknown", lambda w: w.pretrain({"backbone.name": "encodr"}),
     1, r"unknown backbone 'encodr'\. Did you mean 'encoder'\?"),
    ("backbone-provided-key", lambda w: w.pretrain({"backbone.vocabulary_size": 10}),
     1, r"config key 'backbone\.vocabulary_size' is set by kplm itself"),
    ("objective-mask-rate-0", lambda w: w.pretrain({"objective.mask_rate": 0}),
     1, r"objective\.mask_rate must be in \(0, 1\), got 0"),
    ("objectives-weight-negative", lambda w: w.pretrain(
        {"objective": DELETE, "objectives": [{"name": "masked_lm", "weight": -1}]}),
     1, r"config key 'objectives\[0\]\.weight': expected a number > 0"),
    ("objective-wrong-family", lambda w: w.pretrain({"objective.name": "causal_lm"}),
     1, r"objective 'causal_lm' trains decoder backbones; backbone 'encoder' is an encoder"),
    ("tokenizer-vocabulary-size-0", lambda w: w.pretrain(
        {"tokenizer": {"name": "wordpiece", "vocabulary_size": 0}}),
     1, r"tokenizer\.vocabulary_size must be >= 6 \(the 5 special tokens"),
    ("tokenizer-vocabulary-missing", lambda w: w.pretrain(
        {"tokenizer.vocabulary": "/nonexistent/vocab.txt"}),
     1, r"tokenizer\.vocabulary: /nonexistent/vocab\.txt not found"),
    ("trainer-learning-rate-negative", lambda w: w.pretrain({"trainer.learning_rate": -1e-3}),
     1, r"trainer\.learning_rate must be > 0, got -0\.001"),
    ("trainer-learning-rate-nan", lambda w: w.pretrain({"trainer.learning_rate": float("nan")}),
     1, r"config key 'trainer\.learning_rate': expected a finite number, got nan"),
    ("trainer-warmup-past-steps", lambda w: w.pretrain({"trainer.warmup_steps": 5}),
     1, r"trainer\.warmup_steps must be in \[0, trainer\.steps \(1\)\], got 5"),
    ("trainer-batch-size-0", lambda w: w.pretrain({"trainer.batch_size": 0}),
     1, r"trainer\.batch_size must be >= 1, got 0"),
    ("trainer-steps-infinite", lambda w: w.pretrain({"trainer.steps": float("inf")}),
     1, r"config key 'trainer\.steps': expected int, got inf"),
    ("trainer-steps-huge", lambda w: w.pretrain({"trainer.steps": 10 ** 30}),
     1, r"config key 'trainer\.steps': 1000000000000000000000000000000 is out of range"),
    ("trainer-beta-1", lambda w: w.pretrain({"trainer.beta_1": 1.0}),
     1, r"trainer\.beta_1 must be in \[0, 1\), got 1\.0"),
    ("trainer-strategy-unknown", lambda w: w.pretrain({"trainer.strategy": "mirorred"}),
     1, r"config key 'trainer\.strategy': expected one of .* Did you mean 'mirrored'\?"),
    ("callbacks-not-a-list", lambda w: w.pretrain({"callbacks": "early_stopping"}),
     1, r"config key 'callbacks': expected a list"),
    ("data-train-missing", lambda w: w.pretrain({"data": {}}),
     1, r"config key 'data\.train' is required"),
    ("data-a-list", lambda w: w.pretrain({"data": ["train.txt"]}),
     1, r"config key 'data': expected a mapping of split names"),
    # --- data files -------------------------------------------------------------------------------
    ("text-no-match", lambda w: w.data({"name": "text_files", "paths": [w.path("*.none")]}),
     1, r"paths: no file matches '.*\*\.none'"),
    ("text-a-directory", lambda w: w.data({"name": "text_files", "paths": [w.dir]}),
     1, r"paths: '.*' is a directory; name the files in it"),
    ("text-invalid-utf8", lambda w: w.data({"name": "text_files", "paths": [
        w.write("d.txt", b"fine\nbad \xff byte\n")]}),
     1, r"d\.txt:2: invalid UTF-8 \(byte 0xff at column 5\)"),
    ("text-nul-byte", lambda w: w.data({"name": "text_files", "paths": [
        w.write("d.txt", b"fine\nfine\nnul \x00 here\n")]}),
     1, r"d\.txt:3: a NUL byte at column 5"),
    ("text-utf16", lambda w: w.data({"name": "text_files", "paths": [
        w.write("d.txt", "text\n".encode("utf-16"))]}),
     1, r"d\.txt:1: invalid UTF-8"),
    ("text-empty", lambda w: w.data({"name": "text_files", "paths": [w.write("d.txt", "\n\n")]}),
     1, r"d\.txt: no text \(the corpus is empty\)"),
    ("text-damaged-gzip", lambda w: w.data({"name": "text_files", "paths": [
        w.write("d.txt.gz", gzip.compress(b"x\n" * 1000)[:30] + b"junk" * 20)]}),
     1, r"d\.txt\.gz: cannot read"),
    ("tsv-bad-byte-line-501", lambda w: w.data(w.csv(w.write(
        "d.tsv", tsv_with(501, b"caf\xe9\tpos")))),
     1, r"d\.tsv:501: invalid UTF-8 \(byte 0xe9 at column 4\)"),
    ("tsv-nul-line-77", lambda w: w.data(w.csv(w.write("d.tsv", tsv_with(77, b"a \x00 b\tpos")))),
     1, r"d\.tsv:77: a NUL byte at column 3"),
    ("tsv-short-row-line-300", lambda w: w.data(w.csv(w.write(
        "d.tsv", tsv_with(300, b"only one")))),
     1, r"d\.tsv:300: expected at least 2 columns, found 1"),
    ("tsv-over-long-field", lambda w: w.data(w.csv(w.write(
        "d.tsv", tsv_with(9, b"x" * 200000 + b"\tpos")))),
     1, r"d\.tsv:9: malformed row \(field larger than field limit"),
    ("csv-unclosed-quote-line-42", lambda w: w.data(w.csv(w.write(
        "d.csv", tsv_with(42, b'"never closed,pos').replace(b"\t", b",")))),
     1, r"d\.csv:42: malformed row \(unexpected end of data\)"),
    ("csv-no-such-column", lambda w: w.data({**w.csv(w.runs["train_tsv"]),
                                             "columns": {"text": "body"}}),
     1, r"train\.tsv:1: no column 'body' for field 'text' \(columns: sentence, label\)"),
    ("csv-two-char-delimiter", lambda w: w.data({**w.csv(w.runs["train_tsv"]), "delimiter": ";;"}),
     1, r"config key 'data\.train\.delimiter': expected one character"),
    ("csv-bom-header", lambda w: w.data({**w.csv(w.write("d.tsv", "\ufeff" + TRAIN_TSV)),
                                         "columns": {"text": "nope"}}),
     1, r"d\.tsv:1: no column 'nope' for field 'text' \(columns: sentence, label\)"),
    ("jsonl-invalid-json-line-3", lambda w: w.data({"name": "jsonl", "paths": [w.write(
        "d.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": \n')]}),
     1, r"d\.jsonl:3: invalid JSON \(Expecting value at column 10\)"),
    ("jsonl-invalid-utf8-line-2", lambda w: w.data({"name": "jsonl", "paths": [w.write(
        "d.jsonl", b'{"text": "a"}\n{"text": "\xc3("}\n')]}),
     1, r"d\.jsonl:2: invalid UTF-8 \(byte 0xc3 at column 11\)"),
    ("jsonl-missing-field", lambda w: w.data({"name": "jsonl", "paths": [w.write(
        "d.jsonl", '{"text": "a"}\n{"body": "b"}\n')]}),
     1, r"d\.jsonl:2: no field 'text' \(fields: body\); set text_field"),
    ("jsonl-deep-nesting", lambda w: w.data({"name": "jsonl", "paths": [w.write(
        "d.jsonl", '{"text": ' + "[" * 100000 + "]" * 100000 + "}\n")]}),
     1, r"d\.jsonl:1: invalid JSON \(nested too deeply\)"),
    ("conll-column-count-line-4", lambda w: w.data({"name": "conll", "paths": [w.write(
        "d.conll", "Paris NNP B-LOC\nis VBZ O\n\nHi O\n")]}),
     1, r"d\.conll:4: expected 3 columns \(as on the first token line\), found 2"),
    ("conll-token-column-only", lambda w: w.data({"name": "conll", "paths": [w.write(
        "d.conll", "Hi\nParis\n\nnice\n")]}),
     1, r"d\.conll:1: token_column 0 and tag_column -1 are the same column of 1: expected a "
        r"token and a tag column"),
    ("finetune-ner-bioes-tags", lambda w: w.finetune({
        "data.train": {"name": "conll", "paths": [w.write(
            "d.conll", "Bob S-PER\nwent O\nto O\nNew B-LOC\nYork E-LOC\n\nHi O\n")]},
        "head": {"name": "token_classification"}}),
     1, r"data\.train: .*d\.conll:1: tags \['E-LOC', 'S-PER'\] are not IOB2 \(O, B-TYPE, "
        r"I-TYPE\); convert the tags \(BIOES: S- to B-, E- to I-\)"),
    ("finetune-header-read-as-row", lambda w: w.finetune({"data.train": {
        "name": "csv", "paths": [w.write("h.tsv", "sentence\tlabel\n" + "good film\tpos\n"
                                         "bad film\tneg\n" * 6)],
        "header": False, "columns": {"text": 0, "label": 1}}}),
     1, r"data\.train: .*h\.tsv:1: label 'label' occurs only here, on the file's first line, "
        r"read with header: false: a header read as a row\? Set header: true"),
    ("finetune-regression-header-read-as-row", lambda w: w.finetune({"data.train": {
        "name": "csv", "paths": [w.write("h.tsv", "sentence\tscore\na\t1\nb\t2\n")],
        "header": False, "columns": {"text": 0, "label": 1}}, "head": {"name": "regression"}}),
     1, r"data\.train: .*h\.tsv:1: label 'score' is not a number \(a header line\? set "
        r"header: true\)"),
    ("finetune-label-not-in-head-labels", lambda w: w.finetune({
        "data.train": w.csv(w.write("d.tsv", tsv_with(9, b"the film\tpso"))),
        "head": {"name": "sequence_classification", "labels": ["neg", "pos"]}}),
     1, r"data\.train: .*d\.tsv:9: labels \['pso'\] are not in head\.labels"),
    ("finetune-ner-tag-not-in-head-labels-jsonl", lambda w: w.finetune({
        "data.train": {"name": "conll", "paths": [w.write(
            "d.conll", "Bob B-PER\nwent O\n\nto O\nParis B-LCO\n")]},
        "head": {"name": "token_classification", "labels": ["B-LOC", "B-PER", "O"]}}),
     1, r"data\.train: .*d\.conll:4: tags \['B-LCO'\] are not in head\.labels"),
    ("finetune-regression-label-python-only-number", lambda w: w.finetune({
        "data.train": w.csv(w.write("r.tsv", "sentence\tlabel\na\t1\nb\t1_0\n")),
        "head": {"name": "regression"}}),
     1, r"data\.train: .*r\.tsv:3: label '1_0' is not a number"),
    ("finetune-regression-label-beyond-float32", lambda w: w.finetune({
        "data.train": w.csv(w.write("r.tsv", "sentence\tlabel\na\t1\nb\t1e39\n")),
        "head": {"name": "regression"}}),
     1, r"data\.train: .*r\.tsv:3: label '1e39' is out of float32's range"),
    ("conll-invalid-utf8", lambda w: w.data({"name": "conll", "paths": [w.write(
        "d.conll", b"Paris B-LOC\n\xff O\n")]}),
     1, r"d\.conll:2: invalid UTF-8"),
    ("squad-invalid-json", lambda w: w.data({"name": "squad", "paths": [w.write(
        "d.json", '{"data": [\n{"paragraphs": ]}')]}),
     1, r"d\.json:2: invalid JSON"),
    ("squad-answer-mismatch", lambda w: w.data({"name": "squad", "paths": [w.write(
        "d.json", json.dumps({"data": [{"paragraphs": [{"context": "Ada wrote it.", "qas": [
            {"id": "q1", "question": "Who?",
             "answers": [{"text": "Bob", "answer_start": 0}]}]}]}]}))]}),
     1, r"d\.json/data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id q1\): answers\[0\] 'Bob' does "
        r"not match"),
    ("squad-answer-text-empty", lambda w: w.data({"name": "squad", "paths": [w.write(
        "d.json", json.dumps({"data": [{"paragraphs": [{"context": "Ada wrote it.", "qas": [
            {"id": "q1", "question": "Who?",
             "answers": [{"text": "", "answer_start": -1}]}]}]}]}))]}),
     1, r"\(id q1\): answers\[0\] has an empty 'text' \(an unanswerable question\? set "
        r"require_answers: false"),
    ("squad-impossible-with-answers", lambda w: w.data({"name": "squad", "paths": [w.write(
        "d.json", json.dumps({"data": [{"paragraphs": [{"context": "Ada wrote it.", "qas": [
            {"id": "q1", "question": "Who?", "is_impossible": True,
             "answers": [{"text": "Ada", "answer_start": 0}]}]}]}]}))]}),
     1, r"\(id q1\): is_impossible is true but 'answers' holds 1; expected an empty list"),
    ("tfrecord-manifest-damaged", lambda w: w.data({"name": "tfrecord", "path": os.path.dirname(
        w.write("shards/manifest.json", json.dumps(
            {"format": "kplm-tfrecord", "complete": True, "splits": [1]})))}),
     1, r"manifest\.json: 'splits' must map split names to objects"),
    ("parallel-misaligned", lambda w: w.data({"name": "parallel_text",
                                              "source": w.write("a.en", "a\nb\nc\n"),
                                              "target": w.write("a.de", "x\ny\n")}),
     1, r"source .*a\.en has 3 lines but target .*a\.de has 2; the files must be line-aligned"),
    ("parallel-invalid-utf8", lambda w: w.data({"name": "parallel_text",
                                                "source": w.write("a.en", "a\nb\n"),
                                                "target": w.write("a.de", b"x\n\xfe\n")}),
     1, r"a\.de:2: invalid UTF-8"),
    # --- finetune: init_from and its sections -----------------------------------------------------
    ("init-from-truncated-weights", lambda w: w.finetune({"init_from": damaged(
        "enc", "backbone.weights.h5", truncated)(w)}),
     1, r"backbone\.weights\.h5: cannot read the init_from weights \(damaged\?\): .*truncated"),
    ("init-from-missing", lambda w: w.finetune({"init_from": w.path("nowhere")}),
     1, r"config key 'init_from': '.*nowhere' is not a directory"),
    ("init-from-not-a-run", lambda w: w.finetune({"init_from": w.dir}),
     1, r"config key 'init_from': .* is not a kplm pretraining run directory"),
    ("init-from-backbone-json-invalid", lambda w: w.finetune({"init_from": damaged(
        "enc", "backbone.json", write_text("{not json"))(w)}),
     1, r"backbone\.json: cannot read the init_from checkpoint's JSON: Expecting property name"),
    ("head-missing", lambda w: w.finetune({"head": DELETE}),
     1, r"config key 'head' is required"),
    ("head-dropout-2", lambda w: w.finetune({"head.dropout": 2}),
     1, r"head\.dropout must be in \[0, 1\), got 2"),
    ("head-unknown", lambda w: w.finetune({"head.name": "sequence_clasification"}),
     1, r"unknown head 'sequence_clasification'\. Did you mean 'sequence_classification'\?"),
    ("finetune-lr-scale-2", lambda w: w.finetune({"finetune": {"backbone_learning_rate_scale": 2}}),
     1, r"finetune\.backbone_learning_rate_scale must be in \[0, 1\], got 2"),
    ("finetune-classifier-on-a-decoder", lambda w: w.finetune({"init_from": w.runs["clm"]}),
     1, r"head 'sequence_classification' fine-tunes encoder backbones; init_from .*clm is a "
        r"decoder"),
    ("finetune-seq2seq-on-an-encoder", lambda w: w.finetune({"head": {"name": "seq2seq"}}),
     1, r"head 'seq2seq' fine-tunes encoder-decoder backbones; init_from .*enc is an encoder"),
    ("finetune-hf-config-zero-heads", lambda w: w.finetune({"init_from": hf_checkpoint(
        w, num_attention_heads=0)}),
     1, r"hf/config\.json: backbone\.num_heads must be >= 1, got 0"),
    ("finetune-hf-config-string-size", lambda w: w.finetune({"init_from": hf_checkpoint(
        w, hidden_size="big")}),
     1, r"hf/config\.json: hidden_size: expected a whole number, got 'big'"),
    ("callback-argument-of-wrong-type", lambda w: w.finetune(
        {"callbacks": [{"name": "early_stopping", "monitor": 5}]}),
     1, r"config key 'callbacks\[0\]\.monitor': expected str, got 5"),
    ("finetune-tokenizer-with-init-from", lambda w: w.finetune(
        {"tokenizer": {"name": "wordpiece"}}),
     1, r"config key 'tokenizer': comes from init_from"),
    # --- evaluate / predict on run directories ----------------------------------------------
    ("evaluate-a-pretraining-run", lambda w: ["evaluate", w.runs["enc"],
                                              "--data", w.runs["train_tsv"]],
     1, r"enc: not a fine-tuned run directory \(no head\.json\) \(a pretraining run"),
    ("evaluate-data-missing", lambda w: ["evaluate", w.runs["clf"], "--data", w.path("x.tsv")],
     1, r"paths: no file matches '.*x\.tsv'"),
    ("evaluate-data-invalid-utf8", lambda w: ["evaluate", w.runs["clf"], "--data",
                                              w.write("x.tsv", tsv_with(12, b"\xff\tpos", 20))],
     1, r"x\.tsv:12: invalid UTF-8"),
    ("evaluate-label-unknown-names-the-file", lambda w: [
        "evaluate", w.runs["clf"], "--data", w.write("x.tsv", tsv_with(3, b"the film\tmeh", 20))],
     1, r"--data: .*x\.tsv:3: labels \['meh'\] are not in head\.labels \['neg', 'pos'\]"),
    ("predict-head-labels-edited", predict_on(damaged(
        "clf", "head.json", lambda p: edit_json(p, labels=["neg", "pos", "meh"]))),
     1, r"clf: head\.json does not match model\.json \(num_classes: 2 in model\.json, 3 from "
        r"head\.json\); one was edited"),
    ("predict-head-labels-empty", predict_on(damaged(
        "clf", "head.json", lambda p: edit_json(p, labels=[]))),
     1, r"head\.json: head\.labels: at least 2 labels, got 0"),
    ("predict-head-label-blank", predict_on(damaged(
        "clf", "head.json", lambda p: edit_json(p, labels=[" ", "pos"]))),
     1, r"head\.json: head\.labels: every label must be a non-empty string"),
    ("finetune-labels-differ-in-case", lambda w: w.finetune({"data.train": w.csv(w.write(
        "d.tsv", tsv_with(7, b"the film\tPOS")))}),
     1, r"data\.train \(.*d\.tsv\): labels 'POS', 'pos' differ only in spelling \(case, number "
        r"format, spaces\) and would be separate classes"),
    ("finetune-text-field-missing", lambda w: w.finetune({"head.text_field": "nope"}),
     1, r"data\.train \(.*\): the data has no field 'nope' \(fields: label, text\); set "
        r"head\.text_field"),
    ("finetune-pair-field-missing", lambda w: w.finetune({"head.pair_field": "nope"}),
     1, r"the data has no field 'nope' \(fields: label, text\); set head\.pair_field"),
    pytest.param(  # the check is for CPUs: where a GPU holds the activations, it is skipped
        "finetune-batch-beyond-memory", lambda w: w.finetune({"trainer.batch_size": 10**9}),
        1, r"config key 'trainer\.batch_size' \(1,000,000,000\): a step of 1,000,000,000 rows of "
           r"at least 16 tokens keeps at least [\d,.]+ GiB of activations, more than this "
           r"machine's", id="finetune-batch-beyond-memory",
        marks=pytest.mark.skipif(bool(shutil.which("nvidia-smi")) or os.path.exists(
            "/dev/nvidiactl"), reason="a GPU is visible: activations are not checked against "
                                      "host memory")),
    ("predict-nan-weights", predict_on(damaged("clf", "model.weights.h5", poison_weights_file)),
     1, r"model\.weights\.h5 \(model weights\): weight .* is NaN or inf in the file"),
    ("finetune-label-empty", lambda w: w.finetune({"data.train": w.csv(w.write(
        "d.tsv", tsv_with(7, b"the film\t")))}),
     1, r"data\.train: .*d\.tsv:7: the label \('label'\) is empty"),
    ("finetune-data-train-null", lambda w: w.finetune({"data.train": None}),
     1, r"config key 'data\.train' is required"),
    ("evaluate-run-unfinished", lambda w: ["evaluate", damaged(
        "clf", "metrics.json", os.remove)(w), "--data", w.runs["train_tsv"]],
     1, r"has no metrics\.json: the run did not finish; run its kplm finetune command again "
        r"to finish it, or write these metrics elsewhere with -o FILE"),
    ("evaluate-run-metrics-damaged", lambda w: ["evaluate", damaged(
        "clf", "metrics.json", write_text("[1, 2"))(w), "--data", w.runs["train_tsv"]],
     1, r"metrics\.json: cannot read the run's metrics"),
    ("predict-run-dir-missing", lambda w: ["predict", w.path("nowhere")],
     2, r"'RUN_DIR'.*does not exist.*kplm predict --help"),
    ("predict-stdin-invalid-utf8", predict_on(lambda w: w.runs["clf"], b"fine\nbad \xff\n"),
     1, r"stdin:2: invalid UTF-8 \(byte 0xff at column 5\)"),
    ("predict-tsv-row-on-a-one-text-head",  # GLUE's test TSV: header and index read as text
     predict_on(lambda w: w.runs["clf"], "index\tsentence\n0\ta film\n"),
     1, r"stdin:1: a TAB in the line, but this head takes one text per line"),
    ("predict-input-file-nul", lambda w: ["predict", w.runs["clf"], "--input",
                                          w.write("in.txt", b"a\nb\n\x00\n")],
     1, r"in\.txt:3: a NUL byte at column 1"),
    ("predict-truncated-model-weights", predict_on(damaged("clf", "model.weights.h5", truncated)),
     1, r"model\.weights\.h5: cannot read model weights \(\.weights\.h5\): .*truncated"),
    ("predict-missing-model-weights", predict_on(damaged("clf", "model.weights.h5", remove)),
     1, r"clf: no model\.weights\.h5; the fine-tuning run did not finish"),
    ("predict-model-json-invalid", predict_on(damaged("clf", "model.json", write_text("[1, 2"))),
     1, r"model\.json: cannot read a saved model config"),
    ("predict-model-json-not-a-model", predict_on(damaged("clf", "model.json",
                                                          write_text("[1, 2]"))),
     1, r"model\.json: not a saved Keras model"),
    ("predict-head-json-bad-dropout", predict_on(damaged(
        "clf", "head.json", lambda p: edit_json(p, dropout=5))),
     1, r"head\.json: head\.dropout must be in \[0, 1\), got 5"),
    ("predict-config-alias-bomb", predict_on(damaged("clf", "config.yaml",
                                                     write_text(alias_bomb("seed")))),
     1, r"config\.yaml: the YAML expands to more than"),
    ("predict-tokenizer-missing", predict_on(damaged("clf", "tokenizer", remove)),
     1, r"clf: no saved tokenizer \(tokenizer/\)"),
    ("predict-tokenizer-json-invalid", predict_on(damaged("clf", "tokenizer/tokenizer.json",
                                                          write_text("{"))),
     1, r"tokenizer\.json: cannot read a saved tokenizer config"),
    ("predict-vocab-invalid-utf8", predict_on(damaged("clf", "tokenizer/vocab.txt",
                                                      lambda p: open(p, "ab").write(b"\xff\n"))),
     1, r"vocab\.txt.*(invalid UTF-8|can't decode)"),
    # --- generate ----------------------------------------------------------------------------
    ("generate-prompt-not-utf8", lambda w: ["generate", w.runs["clm"], "--prompt", "ok",
                                            "--prompt", "caf\udce9"],
     1, r"--prompt 2: not valid UTF-8 text"),
    ("generate-missing-weights", generate_on(damaged("clm", "backbone.weights.h5", remove)),
     1, r"backbone\.weights\.h5: backbone weights \(\.weights\.h5\) not found"),
    ("generate-truncated-weights", generate_on(damaged("clm", "backbone.weights.h5", truncated)),
     1, r"backbone\.weights\.h5: cannot read backbone weights"),
    ("generate-top-k-beyond-vocabulary", generate_on(lambda w: w.runs["clm"], "--sampler",
                                                     "top_k", "--top-k", "100000"),
     1, r"sampler option k \(--top-k\) must be at most the vocabulary size \([\d,]+\), got "
        r"100,000"),
    ("generate-beams-beyond-vocabulary", generate_on(lambda w: w.runs["clm"], "--sampler",
                                                     "beam", "--num-beams", "100000"),
     1, r"sampler option num_beams \(--num-beams\) must be at most the vocabulary size"),
    ("generate-on-encoder-run", lambda w: ["generate", w.runs["enc"], "--prompt", "a"],
     1, r"enc: a pretraining run of an encoder backbone \(Encoder, objective masked_lm\); "
        r"generate needs a decoder run \(objective causal_lm\)"),
    ("generate-on-finetuned-run", lambda w: ["generate", w.runs["clf"], "--prompt", "a"],
     1, r"clf: a fine-tuned run \(head\.json\); generate needs a decoder run"),
    ("generate-file-invalid-utf8", lambda w: ["generate", w.runs["clm"], "--file",
                                              w.write("p.txt", b"the film\n\xc0 x\n")],
     1, r"p\.txt:2: invalid UTF-8 \(byte 0xc0 at column 1\)"),
    ("generate-stdin-invalid-utf8", lambda w: {"args": ["generate", w.runs["clm"], "--file", "-"],
                                               "input": b"ok\n\xff\n"},
     1, r"stdin:2: invalid UTF-8"),
    ("generate-file-missing", lambda w: ["generate", w.runs["clm"], "--file", w.path("p.txt")],
     2, r"'--file'.*p\.txt.*No such file or directory"),
    ("generate-seed-out-of-range", lambda w: ["generate", w.runs["clm"], "--prompt", "a",
                                              "--sampler", "top_k", "--top-k", "2", "--seed",
                                              str(10 ** 25)],
     1, r"sampler option seed must be in \[0, 2\*\*31\), got 1000000000000000000000000"),
    ("generate-temperature-infinite", lambda w: ["generate", w.runs["clm"], "--prompt", "a",
                                                 "--temperature", "inf"],
     1, r"sampler option temperature must be > 0 and finite, got inf"),
    ("generate-no-prompt", lambda w: ["generate", w.runs["clm"], "--file",
                                      w.write("p.txt", "\n\n")],
     1, r"no prompt: give --prompt TEXT or --file PROMPTS\.txt"),
    ("generate-top-p-2", lambda w: ["generate", w.runs["clm"], "--prompt", "a", "--sampler",
                                    "top_p", "--top-p", "2"],
     1, r"sampler option p must be in \(0, 1\], got 2\.0"),
    ("generate-max-length-too-long", lambda w: ["generate", w.runs["clm"], "--prompt", "a",
                                                "--max-length", "1000"],
     1, r"max_length must be within \[2, 16\]"),
    ("generate-foreign-module", generate_on(damaged(
        "clm", "backbone.json", lambda p: set_module(p, "antigravity"))),
     1, r"backbone\.json: names module 'antigravity', which is not kplm's"),
    ("generate-backbone-json-bad-heads", generate_on(damaged(
        "clm", "backbone.json", lambda p: edit_json(p, num_heads=0))),
     1, r"backbone\.json: backbone\.num_heads must be >= 1, got 0"),
    # --- export, tokenizer train, data prepare ----------------------------------------------
    ("export-not-a-run", lambda w: ["export", w.write("empty/.keep", "") and w.path("empty"),
                                    "--format", "hf", "-o", w.path("out")],
     1, r"empty.* is not a kplm pretraining run directory"),
    ("export-truncated-model-weights", lambda w: ["export", damaged(
        "clf", "model.weights.h5", truncated)(w), "-o", w.path("out")],
     1, r"model\.weights\.h5: cannot read model weights"),
    ("tokenizer-train-vocabulary-size-0", lambda w: [
        "tokenizer", "train", w.pretrain({"tokenizer": {"name": "wordpiece",
                                                        "vocabulary_size": 0}})[1],
        "-o", w.path("tok")],
     1, r"tokenizer\.vocabulary_size must be >= 6"),
    ("tokenizer-train-data-invalid-utf8", lambda w: [
        "tokenizer", "train", w.data({"name": "text_files", "paths": [
            w.write("d.txt", b"ok\n\xff\n")]})[1], "-o", w.path("tok")],
     1, r"d\.txt:2: invalid UTF-8"),
    ("tokenizer-train-config-bomb", lambda w: [
        "tokenizer", "train", w.write("c.yaml", alias_bomb("data")), "-o", w.path("tok")],
     1, r"c\.yaml: the YAML expands"),
    ("data-prepare-unknown-key", lambda w: [
        "data", "prepare", w.pretrain({"datta": 1})[1], "-o", w.path("shards")],
     1, r"unknown config key 'datta'"),
    ("data-prepare-invalid-utf8", lambda w: [
        "data", "prepare", w.data({"name": "text_files", "paths": [
            w.write("d.txt", b"ok\nok\n\xff\n")]})[1], "-o", w.path("shards")],
     1, r"d\.txt:3: invalid UTF-8"),
    # --- plugins and the launcher -----------------------------------------------------------
    ("plugins-load-not-installed-strict", lambda w: {"args": ["plugins"], "env": {
        "KPLM_LOAD_PLUGINS": "kplm_no_such_plugin", "KPLM_STRICT_PLUGINS": "1"}},
     1, r"KPLM_LOAD_PLUGINS names plugin 'kplm_no_such_plugin', which is not installed"),
    ("plugins-disable-not-installed-strict", lambda w: {"args": ["plugins"], "env": {
        "KPLM_DISABLE_PLUGINS": "kplm_typo", "KPLM_STRICT_PLUGINS": "1"}},
     1, r"KPLM_DISABLE_PLUGINS names plugin 'kplm_typo', which is not installed"),
    ("plugins-strict-unreadable", lambda w: {"args": ["plugins"], "env": {
        "KPLM_STRICT_PLUGINS": "maybe"}},
     1, r"KPLM_STRICT_PLUGINS must be 1 or 0 .* got 'maybe'"),
    ("unknown-command", lambda w: ["pretrian"],
     2, r"No such command 'pretrian'.*kplm --help"),
    ("unknown-option", lambda w: ["predict", w.runs["clf"], "--bogus"],
     2, r"No such option '--bogus'.*kplm predict --help"),
    # --- where commands write (the output rule, kplm.outputs) ------------------------------
    ("run-dir-under-a-file", lambda w: w.pretrain(
        {"run_dir": os.path.join(w.write("afile", "x"), "run")}),
     1, r"run_dir: .*afile is a file, so .*afile/run cannot be created"),
    ("run-dir-config-not-utf8", lambda w: w.pretrain({"run_dir": os.path.dirname(
        w.write("damaged_run/config.yaml", b"\xff\xfe seed: 0\n"))}),
     1, r"damaged_run holds a kplm run whose config\.yaml is not UTF-8 text \(damaged\); "
        r"choose another run_dir or pass --overwrite"),
    ("run-dir-config-not-a-mapping", lambda w: w.pretrain({"run_dir": os.path.dirname(
        w.write("damaged_run/config.yaml", "- a list\n"))}),
     1, r"damaged_run holds an unfinished run with a different config \(the run's config\.yaml "
        r"is damaged: not a YAML mapping\)"),
    ("export-into-non-empty-dir", lambda w: [
        "export", w.runs["clf"], "-o", os.path.dirname(w.write("full/x.txt", "keep"))],
     1, r"full holds x\.txt"),
    ("predict-output-folder-missing", lambda w: {
        "args": ["predict", w.runs["clf"], "-o", w.path("no/such/out.jsonl")], "input": "a\n"},
     1, r"folder .*no/such does not exist"),
    ("predict-output-a-pipe", lambda w: {"args": ["predict", w.runs["clf"], "-o", fifo(
        w.path("pipe")), "--overwrite"], "input": "a\n"},
     1, r"--output: .*pipe is not a regular file \(a device, a pipe or a socket\)"),
    ("evaluate-output-ends-with-a-slash", lambda w: [
        "evaluate", w.runs["clf"], "--data", w.runs["train_tsv"], "-o", w.path("new") + "/"],
     1, r"--output: .*new/ is a directory, expected a file name"),
    ("evaluate-output-under-a-file", lambda w: [
        "evaluate", w.runs["clf"], "--data", w.runs["train_tsv"], "-o",
        os.path.join(w.write("afile.txt", "x"), "m.json")],
     1, r"--output: .*afile\.txt is a file, so .*m\.json cannot be created"),
    ("predict-output-empty", lambda w: {"args": ["predict", w.runs["clf"], "-o", ""],
                                        "input": "a\n"},
     1, r"--output: an empty path; expected a file"),
    ("data-path-a-pipe", lambda w: w.data({"name": "text_files", "paths": [fifo(w.path("p"))]}),
     1, r"paths: '.*p' is not a regular file \(a device, a pipe or a socket\); expected a data "
        r"file"),
    ("tokenizer-train-output-a-file", lambda w: [
        "tokenizer", "train", w.pretrain()[1], "-o", w.write("tokfile", "x")],
     2, r"tokfile.*is a file"),
]


def _params():
    return [case if hasattr(case, "marks") else pytest.param(*case, id=case[0])
            for case in CASES]


def snapshot(*roots):
    """Every path under ``roots``: files with their size and modification time."""
    seen = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs:
                seen[os.path.join(directory, name)] = "dir"
            for name in files:
                stat = os.lstat(os.path.join(directory, name))
                seen[os.path.join(directory, name)] = (stat.st_size, stat.st_mtime_ns)
    return seen


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Rows that set KPLM_* plugin variables get a plugin manager of their own."""
    for var in ("KPLM_LOAD_PLUGINS", "KPLM_DISABLE_PLUGINS", "KPLM_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    yield
    plugins.reset()


@pytest.mark.parametrize("name, make, code, pattern", _params())
def test_hostile_input_is_refused_in_one_line(name, make, code, pattern, runs, tmp_path,
                                              fresh_plugins):
    from kplm.cli import cli

    w = Workspace(tmp_path / "case", runs)
    os.makedirs(w.dir)
    made = make(w)
    made = made if isinstance(made, dict) else {"args": made}
    env = made.get("env")
    if env:
        plugins.reset()  # the variables are read when the plugin manager starts
    before = snapshot(w.dir, runs["root"])
    result = CliRunner().invoke(cli, [str(a) for a in made["args"]], input=made.get("input"),
                                env=env, prog_name="kplm")
    stderr = result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{name}: an exception escaped: {result.exception!r}\n{stderr}")
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"{name}: expected one stderr line, got:\n{stderr}"
    line = lines[0]
    assert result.exit_code == code, f"{name}: exit {result.exit_code}: {line}"
    assert line.startswith("Error: "), line
    assert re.search(pattern, line), f"{name}: {line!r} does not match {pattern!r}"
    assert len(line) <= MAX_LINE, f"{name}: {len(line)} characters: {line}"
    assert not os.path.exists(w.run), f"{name}: the refused run created {w.run}"
    assert snapshot(w.dir, runs["root"]) == before, f"{name}: files changed on disk"


def test_a_missing_plugin_warns_and_is_listed(fresh_plugins, monkeypatch):
    """Without strict mode a KPLM_LOAD_PLUGINS typo is a warning, and `kplm plugins` lists it."""
    from kplm.cli import cli
    from kplm.errors import PluginWarning

    monkeypatch.setenv("KPLM_LOAD_PLUGINS", "kplm_no_such_plugin")
    plugins.reset()
    with pytest.warns(PluginWarning, match="KPLM_LOAD_PLUGINS names plugin 'kplm_no_such_plugin'"):
        result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    failed = json.loads(result.stdout)["failed"]
    assert [f["name"] for f in failed] == ["kplm_no_such_plugin"]
    assert failed[0]["distribution"] == "not installed"


def test_subprocess_alias_bomb_is_one_short_line_before_tensorflow(tmp_path):
    """The real launcher: a 400-byte alias bomb is refused in one short stderr line (the
    7.2-million-character line of before), without importing TensorFlow first."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb("seed"))
    result = run_kplm("pretrain", str(path), timeout=120)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "the YAML expands to more than 100,000 values" in line and len(line) <= MAX_LINE


def test_subprocess_warning_for_a_missing_plugin_is_one_line(tmp_path):
    result = run_kplm("--help", env={"KPLM_LOAD_PLUGINS": "kplm_no_such_plugin"}, timeout=120)
    assert result.returncode == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith("Warning: KPLM_LOAD_PLUGINS names plugin 'kplm_no_such_plugin'")


def test_python_fed_datasets_are_released_before_exit(tmp_path):
    """A csv source iterated (as evaluation does) and left in a reference cycle is finalized
    while Python still runs: no "Error occurred when finalizing GeneratorDataset iterator"."""
    import subprocess
    import sys
    data = tmp_path / "d.tsv"
    data.write_text(TRAIN_TSV)
    code = (
        "from kplm.data.csv_files import CsvFiles\n"
        f"ds = CsvFiles(paths=[{str(data)!r}], columns={{'text': 'sentence'}}).build()\n"
        "class Holder: pass\n"
        "h = Holder(); h.self = h; h.it = iter(ds.repeat()); next(h.it)\n"
        "del h\n")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finalizing GeneratorDataset iterator" not in done.stderr


def test_the_activation_memory_check_is_a_lower_bound():
    """A batch is refused only when its activations alone exceed the memory; micro-batches,
    replicas and (with length bucketing) the shortest rows a batch may be cut to lower it."""
    from kplm.errors import ConfigError
    from kplm.training.distribute import check_activation_memory

    class Base:  # BERT-base
        num_layers, hidden_dim, intermediate_dim, num_heads, sequence_length = 12, 768, 3072, 12, 512
    # per token: 12 x (8 x 768 + 2 x 3072 + 12 x 512) floats = 221,184 floats, 0.84 MiB
    check_activation_memory(32, 1, Base(), 512, memory=16 * 2**30)  # 32 x 512: 13.5 GiB
    with pytest.raises(ConfigError, match=r"a step of 64 rows of at least 512 tokens keeps at "
                                          r"least 27\.0 GiB of activations, more than this "
                                          r"machine's 16\.0 GiB"):
        check_activation_memory(64, 1, Base(), 512, memory=16 * 2**30)
    check_activation_memory(64, 2, Base(), 512, memory=16 * 2**30)  # two micro-batches
    check_activation_memory(1024, 1, Base(), 16, memory=16 * 2**30)  # bucketed rows of >= 16
