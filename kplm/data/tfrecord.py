"""Token ids prepared by ``kplm data prepare``: TFRecord shards read with interleave."""
import os
from typing import Literal, Optional

from kplm.components import DataSource
from kplm.data.prepare import (FEATURE, MANIFEST, TOKENIZER_DIR, read_manifest, tokenizer_hash)
from kplm.errors import ConfigError, DataError, shown
from kplm.hookspecs import hookimpl


class TFRecordShards(DataSource):
    """Streams pre-tokenized examples ``{"ids": int32 vector}`` from a directory written by
    ``kplm data prepare`` (its ``manifest.json`` lists the shards; a directory without one is
    refused). Shards are read ``cycle_length`` at a time, interleaved record by record, in an
    order fixed by ``seed``: the same config gives the same stream, which exact resume needs.

    Objectives that pack token streams (``masked_lm``, ``causal_lm``, ``span_corruption``,
    ``denoising``) take these examples instead of text; the run's tokenizer must be the one the
    shards were made with (``tokenizer: {name: wordpiece, vocabulary: DIR/tokenizer}``), which
    ``check_tokenizer`` verifies.

    Args:
        path: str. The directory ``kplm data prepare --output`` wrote.
        split: ``"train"`` or ``"validation"``. Which shards to read. Defaults to ``"train"``.
        cycle_length: int. Shards read at once (interleaved). Defaults to 4.
        shuffle_files: bool. Read the shards in an order shuffled with ``seed``, a new order each
            epoch. Defaults to False.
        seed: int. Seed of the shard order. Defaults to 0.

    Example:
        TFRecordShards(path="data/prepared").build()   # {"ids": int32 [tokens]} examples
    """

    name = "tfrecord"
    text_field = FEATURE
    #: Examples are token ids, not text: ``kplm data prepare`` refuses to re-tokenize them.
    token_ids = True
    #: Checked by ``kplm.config`` before anything runs (``kplm.checks``).
    limits = {"cycle_length": ">= 1"}

    def __init__(self, path: str, split: Literal["train", "validation"] = "train",
                 cycle_length: int = 4, shuffle_files: bool = False, seed: int = 0):
        if cycle_length < 1:
            raise ConfigError(f"data.{split}.cycle_length: expected an integer >= 1, got "
                              f"{cycle_length}")
        self.path = path
        self.split = split
        self.cycle_length = cycle_length
        self.shuffle_files = shuffle_files
        self.seed = seed
        self._manifest = None

    # --- the manifest -----------------------------------------------------------------------
    @property
    def manifest(self):
        if self._manifest is None:
            manifest = read_manifest(self.path, f"data {self.split} path")
            _check_manifest(manifest, os.path.join(self.path, MANIFEST))
            self._manifest = manifest
        return self._manifest

    @property
    def files(self):
        """The split's shard files, in manifest order."""
        split = self.manifest.get("splits", {}).get(self.split)
        if not split or not split.get("shards"):
            raise DataError(f"{self.path}: no '{self.split}' shards in {MANIFEST} "
                            f"(splits: {', '.join(self.manifest.get('splits', {})) or 'none'})")
        return [os.path.join(self.path, s["file"]) for s in split["shards"]]

    @property
    def tokenizer_dir(self):
        """The directory holding the tokenizer the ids were made with."""
        return os.path.join(self.path, self.manifest["tokenizer"].get("directory", TOKENIZER_DIR))

    @property
    def tokenizer_sha256(self):
        return self.manifest["tokenizer"]["sha256"]

    def check(self):
        """The manifest is complete and every shard exists with its recorded size."""
        if not self.manifest.get("complete"):
            raise DataError(f"{self.path}: `kplm data prepare` did not finish (manifest "
                            "incomplete); run it again to resume")
        split = self.manifest["splits"].get(self.split) or {}
        for path, shard in zip(self.files, split.get("shards", [])):
            if not os.path.isfile(path):
                raise DataError(f"{path}: shard listed in {MANIFEST} is missing")
            if os.path.getsize(path) != shard.get("bytes"):
                raise DataError(f"{path}: {os.path.getsize(path)} bytes, {MANIFEST} says "
                                f"{shard.get('bytes')}; run `kplm data prepare` again")
        if not split.get("tokens"):
            raise DataError(f"{self.path}: the '{self.split}' shards hold no tokens")

    def check_tokenizer(self, tokenizer):
        """Refuse ``tokenizer`` (a kplm ``Tokenizer``, or the directory one was saved in, e.g. a
        run's ``tokenizer/``) unless it is the one these shards were made with."""
        if isinstance(tokenizer, (str, os.PathLike)):
            check_tokenizer(self.path, tokenizer)
            return
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            check_tokenizer(self.path, tmp, tokenizer_name="the run's tokenizer")

    def check_tokenizer_section(self, section, explicit):
        """Refuse (``ConfigError`` naming the key) a setting of the config's ``tokenizer``
        section (``section``, resolved; ``explicit``: the keys the config itself writes) that
        the tokenizer these shards bring was not made with: pretraining on the shards uses
        theirs, so the setting would be ignored without a word. Compared with what ``kplm data
        prepare`` recorded it learned the tokenizer with, else with the tokenizer's own
        ``tokenizer.json``; a setting neither holds cannot be told apart and passes."""
        import json

        from kplm.data.prepare import LEARNED_WITH
        name = self.manifest["tokenizer"]["name"]
        record, recorded_in = {}, os.path.join(self.tokenizer_dir, "tokenizer.json")
        learned = os.path.join(self.path, LEARNED_WITH)
        for path in (learned, recorded_in):
            try:
                with open(path, encoding="utf-8") as f:
                    found = json.load(f)
            except (OSError, ValueError):
                continue
            if path == learned:  # only a record of these shards' very tokenizer
                if not isinstance(found, dict) or found.get("sha256") != self.tokenizer_sha256:
                    continue
                found = found.get("tokenizer")
            if isinstance(found, dict):
                record, recorded_in = found, path
                break
        for key in explicit:
            value = section.get(key)
            if key == "name" and value != name:
                raise ConfigError(f"config key 'tokenizer.name' ({shown(value)}): the shards in "
                                  f"{self.path} hold ids of a {name} tokenizer, which pretraining "
                                  "on them uses; remove the key, or prepare the shards again "
                                  "with this tokenizer")
            if key not in ("name", "vocabulary") and key in record and record[key] != value:
                raise ConfigError(f"config key 'tokenizer.{key}' ({shown(value)}): the tokenizer "
                                  f"the shards in {self.path} bring was made with "
                                  f"{shown(record[key])} ({recorded_in}), and pretraining on the "
                                  "shards uses it; remove the key, or prepare the shards again "
                                  "with this setting")

    def size_bytes(self):
        return sum(os.path.getsize(f) for f in self.files)

    def texts(self):
        raise DataError(f"data source tfrecord ({self.path}) holds token ids, not text: set "
                        f"tokenizer.vocabulary: {self.tokenizer_dir}")

    # --- the stream -------------------------------------------------------------------------
    def files_for(self, input_context=None):
        """The shards one input pipeline reads: every ``num_input_pipelines``-th file from
        ``input_pipeline_id`` (a ``tf.distribute.InputContext``); all of them without one."""
        files = self.files
        if input_context is None or input_context.num_input_pipelines <= 1:
            return files
        n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) < n:
            raise DataError(f"{self.path}: {len(files)} '{self.split}' shard(s) for {n} input "
                            "pipelines; prepare the corpus as at least as many files")
        return files[i::n]

    def build(self, input_context: Optional[object] = None):
        """``{"ids": int32 [tokens]}`` examples. With ``input_context`` (a
        ``tf.distribute.InputContext``, as ``strategy.distribute_datasets_from_function``
        passes) each input pipeline reads its own, disjoint share of the shards. The ids are
        those of the shards' tokenizer: ``check_tokenizer`` refuses another one (``kplm
        pretrain`` calls it, and ``kplm.data.packing.tokenized_texts`` with ``source=``)."""
        import tensorflow as tf

        files = tf.data.Dataset.from_tensor_slices(self.files_for(input_context))
        if self.shuffle_files:
            files = files.shuffle(len(self.files), seed=self.seed, reshuffle_each_iteration=True)
        records = files.interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),  # 1 MB read-ahead
            cycle_length=self.cycle_length, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        spec = {FEATURE: tf.io.RaggedFeature(tf.int64)}

        def parse(serialized):
            return {FEATURE: tf.cast(tf.io.parse_example(serialized, spec)[FEATURE], tf.int32)}

        # Parse 256 records per op, then back to single examples.
        examples = records.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                          deterministic=True).unbatch()
        # unbatch leaves a ragged spec of rank 1; make it the plain int32 vector it is
        return examples.map(lambda e: {FEATURE: tf.identity(e[FEATURE])})


def check_tokenizer(manifest_dir, tokenizer_dir, tokenizer_name=None):
    """``ConfigError`` naming both directories unless the tokenizer saved in ``tokenizer_dir``
    hashes like the one the shards in ``manifest_dir`` were made with.

    Example:
        check_tokenizer("data/prepared", "runs/bert/tokenizer")
    """
    manifest = read_manifest(manifest_dir)
    expected = manifest["tokenizer"]["sha256"]
    actual = tokenizer_hash(tokenizer_dir)
    if actual != expected:
        shards_tok = os.path.join(manifest_dir, manifest["tokenizer"].get("directory",
                                                                         TOKENIZER_DIR))
        raise ConfigError(f"tokenizer {tokenizer_name or tokenizer_dir} (sha256 {actual[:12]}) is not the one the "
                          f"shards in {manifest_dir} were made with ({shards_tok}, sha256 "
                          f"{expected[:12]}); set tokenizer.vocabulary: {shards_tok}")


def _check_manifest(manifest, path):
    """Refuse a manifest whose structure is not what ``kplm data prepare`` writes (an edited or
    damaged file), naming it, before any of its values is used."""
    def bad(what):
        return DataError(f"{path}: {what}; is it a manifest written by `kplm data prepare`?")

    splits, tokenizer = manifest.get("splits", {}), manifest.get("tokenizer", {})
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        raise bad("'splits' must map split names to objects")
    for name, split in splits.items():
        shards = split.get("shards", [])
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and isinstance(s.get("file"), str) and s["file"]
                and os.path.basename(s["file"]) == s["file"] for s in shards):
            raise bad(f"splits.{shown(name, 40)}.shards must list objects with a shard 'file' "
                      "name")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("sha256", ""), str):
        raise bad("'tokenizer' must be an object with a 'sha256'")


@hookimpl
def register_data_sources(register):
    register("tfrecord", TFRecordShards)
