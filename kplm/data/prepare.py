"""``kplm data prepare``: tokenize a corpus once into sharded TFRecords, resumably.

The output directory (``--output DIR``, required: the shards of a big corpus belong on a disk
you choose, not next to a run) holds::

    tokenizer/                  the tokenizer the ids were made with (learned here if the
                                config's tokenizer has no vocabulary yet)
    train-00000.tfrecord ...    one shard per input file of data.train, in order
    validation-00000.tfrecord   the same for data.validation, when the config has one
    manifest.json               shards with their source file, records and tokens; totals; the
                                tokenizer's kind and sha256; the kplm version

Each record is a ``tf.train.Example`` with one int64 list feature ``ids``: the tokens of one
example's text field (a line or a document, as the data source yields them), no special tokens.
Read them back with the ``tfrecord`` data source (``kplm.data.tfrecord``).

Files are tokenized in parallel (a process pool, one file per task), streaming: a batch of 256
examples at a time, never a whole file. Each shard is written to ``NAME.tmp`` and renamed when
complete, and the manifest is rewritten (atomically) after every shard, so an interrupted run
picks up where it stopped: a shard whose file exists with the recorded size, and whose entry
records the same source file (size, mtime), source options and tokenizer, is skipped.
"""
import glob
import hashlib
import json
import os
import shutil
import sys
import time

from kplm.errors import ConfigError, DataError, describe, shown

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
#: Beside the learned tokenizer: what it was learned with (the tokenizer and data.train
#: sections), so that a later run reuses it only for the same ones (a file of data.train
#: changed since only has its own shard made again, with the same tokenizer).
LEARNED_WITH = "tokenizer_learned_with.json"
FEATURE = "ids"
FORMAT = "kplm-tfrecord"
SPLITS = ("train", "validation")
BATCH = 256


# --- hashes and manifest I/O (no TensorFlow) -----------------------------------------------------
def tokenizer_hash(directory):
    """sha256 over the files a tokenizer's ``save()`` wrote into ``directory`` (names and bytes,
    sorted by name). Two directories saved from the same tokenizer hash the same."""
    if not os.path.isdir(directory):
        raise ConfigError(f"{directory}: no such tokenizer directory")
    digest = hashlib.sha256()
    names = sorted(n for n in os.listdir(directory)
                   if os.path.isfile(os.path.join(directory, n)) and not n.endswith(".tmp"))
    if not names:
        raise ConfigError(f"{directory}: empty tokenizer directory")
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(directory, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_manifest(directory, key="path"):
    """The manifest of a prepared directory; ``DataError`` (one line naming it) when missing
    or unreadable."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{key}: {directory} has no {MANIFEST}; is it a directory written by "
                        "`kplm data prepare`?") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{key}: cannot read {path}: {describe(e)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{key}: {path} is not a kplm data manifest")
    return manifest


def write_manifest(directory, manifest):
    """Write ``manifest.json`` atomically (temporary name, then rename)."""
    path = os.path.join(directory, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# --- the command -------------------------------------------------------------------------------
def prepare(config, output=None, overwrite=False, echo=print, progress=True, workers=None):
    """Tokenize ``config``'s ``data.train`` (and ``data.validation``) into TFRecord shards in
    ``output``; returns the manifest (a dict).

    ``config`` is a pretraining config (the YAML of ``kplm pretrain``); its ``data`` and
    ``tokenizer`` sections are used, other sections are ignored. A tokenizer without a
    vocabulary is learned from ``data.train`` first (as ``kplm pretrain`` would), and reused from
    ``output/tokenizer`` when an earlier, interrupted run already learned it.

    Args:
        config: dict, as read from YAML.
        output: str, the directory to write (required).
        overwrite: bool. Start from scratch: replace the prepared shards in ``output`` (a
            tokenizer is relearned; the old shards are deleted once the new manifest is written,
            and put back if the command fails before). Never replaces other files, a run, or an
            input of the config (``kplm.outputs``). Without it, finished shards are kept and
            only the missing or stale ones are made.
        echo: a function printing one line, or None for silence.
        progress: bool. A live progress bar on stderr when it is a terminal, else a line per
            finished shard.
        workers: int or None. Processes tokenizing files in parallel; default
            ``min(cpu count, files)``. 1 tokenizes in this process.

    Example:
        manifest = prepare(kplm.config.load_yaml("configs/bert_tiny_mlm.yaml"), "data/prepared")
    """
    from kplm.outputs import in_place_outputs
    with in_place_outputs():  # a new output failing before its manifest is removed again
        return _prepare(config, output, overwrite, echo, progress, workers)


def _prepare(config, output, overwrite, echo, progress, workers):
    from kplm.config import check_data, check_section
    from kplm.plugins import get_registry

    if not output:
        raise ConfigError("--output: the directory to write the shards into is required")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"--workers: expected an integer >= 1, got {shown(workers)}")
    if not isinstance(config, dict):
        raise ConfigError("a config must be a mapping of keys to values")
    from kplm.config import check_run_keys
    check_run_keys(config)  # the other sections are ignored, a misspelt one is refused
    say = echo or (lambda *_: None)
    registry = get_registry()
    data = config.get("data")
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in SPLITS}
    sources = check_data({"data": data}, list(SPLITS), registry)
    tok_cls, tok_args = check_section(config.get("tokenizer", {"name": "wordpiece"}),
                                      "tokenizer", "tokenizer", registry)
    built = {}
    for split, (cls, section) in sources.items():
        if getattr(cls, "token_ids", False):
            raise ConfigError(f"config key 'data.{split}': already token ids (tfrecord); "
                              "prepare reads text sources")
        source = cls(**{k: v for k, v in section.items() if k != "name"})
        try:
            source.check()
        except DataError as e:
            raise DataError(f"data.{split}: {e}") from None
        built[split] = source

    # --- the output directory: new, resumed, or replaced (kplm.outputs) ---------------------
    from kplm import outputs
    output = os.path.abspath(output)
    manifest_path = os.path.join(output, MANIFEST)

    def started(path):
        return os.path.exists(os.path.join(path, MANIFEST))

    def complete(path):  # a replaced output waits aside (.NAME.old-PID) until then
        try:
            return read_manifest(path, "--output").get("complete") is True
        except DataError:
            return False

    outputs.clean_stale(output, started=started, names=outputs.SHARDS_NAMES, complete=complete)
    outputs.check_output(output, what="--output", kind="shards", resume=True,
                         overwrite=overwrite, names=outputs.SHARDS_NAMES,
                         inputs=outputs.config_inputs(config))
    outputs.open_in_place(output, started=started,
                          replace=overwrite and os.path.isdir(output) and bool(os.listdir(output)))
    previous = read_manifest(output, "--output") if os.path.exists(manifest_path) else None

    # --- the tokenizer: given, reused from an earlier run, or learned ------------------------
    tok_dir = os.path.join(output, TOKENIZER_DIR)
    tok_options = {k: v for k, v in tok_args.items() if k != "name"}
    learned_path = os.path.join(output, LEARNED_WITH)
    learned_with = json.loads(json.dumps({"tokenizer": {"name": tok_args["name"], **tok_options},
                                          "data.train": sources["train"][1]}, default=str))
    if tok_options.get("vocabulary") is None and _learned_with(learned_path, tok_dir) == (
            learned_with):
        say(f"reusing the tokenizer learned by an earlier run ({tok_dir})")
    else:
        if os.path.exists(learned_path):
            os.remove(learned_path)  # ours (SHARDS_NAMES); first: a kill below leaves none
        tokenizer = tok_cls(**tok_options)
        if tokenizer.tokens is None:
            import_tensorflow()
            say(f"learning a {tok_args['name']} vocabulary from data.train")
            tokenizer.train(built["train"].texts(), progress=progress,
                            total_bytes=getattr(built["train"], "size_bytes", lambda: None)())
        if os.path.isdir(tok_dir):
            shutil.rmtree(tok_dir)
        tokenizer.save(tok_dir)
        if tok_options.get("vocabulary") is None:  # learned here: say from what, and which
            from kplm.runs import write_json
            write_json(learned_path, {**learned_with, "sha256": tokenizer_hash(tok_dir)})
    tok_sha = tokenizer_hash(tok_dir)

    # --- plan: one shard per input file; keep the finished ones ------------------------------
    from kplm import __version__
    manifest = {"format": FORMAT, "version": 1, "kplm_version": __version__,
                "feature": FEATURE, "dtype": "int64",
                "tokenizer": {"name": tok_args["name"], "directory": TOKENIZER_DIR,
                              "sha256": tok_sha},
                "splits": {}, "records": 0, "tokens": 0, "complete": False}
    old_shards = {}
    for split_entry in (previous or {}).get("splits", {}).values():
        for shard in split_entry.get("shards", []):
            if shard.get("tokenizer_sha256") == tok_sha:
                old_shards[shard["file"]] = shard
    jobs, keep = [], set()
    for split, source in built.items():
        cls, section = sources[split]
        options = {k: v for k, v in section.items() if k not in ("name", "paths")}
        # File sources are split per file; any other source makes one shard.
        per_file = "paths" in section and getattr(source, "files", None)
        files = list(source.files) if per_file else [None]
        shards = []
        for index, path in enumerate(files):
            name = f"{split}-{index:05d}.tfrecord"
            keep.add(name)
            entry = {"file": name, "source": section["name"], "options": options,
                     "source_file": path, "tokenizer_sha256": tok_sha}
            if path is not None:
                st = os.stat(path)
                entry.update(source_size=st.st_size, source_mtime=st.st_mtime)
            old = old_shards.get(name)
            if old is not None and _same_input(old, entry) and _shard_ok(output, old):
                shards.append(old)
                continue
            shards.append(entry)
            jobs.append({"split": split, "entry": entry, "section": section, "path": path,
                         "output": output, "tokenizer": tok_args["name"], "tok_dir": tok_dir,
                         "bytes": entry.get("source_size", 0)})
        manifest["splits"][split] = {"source": section, "shards": shards}
    # Shards of an earlier, bigger plan and half-written temporaries are not ours to keep.
    for path in glob.glob(os.path.join(output, "*.tfrecord*")):
        if os.path.basename(path) not in keep or path.endswith(".tmp"):
            os.remove(path)
    _totals(manifest)
    write_manifest(output, manifest)

    # --- tokenize: in parallel over files, the manifest updated after each shard -------------
    skipped = sum(len(s["shards"]) for s in manifest["splits"].values()) - len(jobs)
    total_bytes = sum(j["bytes"] for j in jobs) or 1
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    if skipped:
        say(f"{skipped} shard(s) already prepared in {output}; skipping them")
    if jobs:
        say(f"tokenizing {len(jobs)} file(s) with {workers} worker(s) into {output}")
    start, done_bytes = time.perf_counter(), 0
    bar = None
    if progress and jobs and sys.stderr.isatty():  # a live bar; logs get a line per shard
        from kplm.progress import ByteProgress
        bar = ByteProgress(total_bytes, label="prepare: tokenized")
    for number, result in enumerate(_run(jobs, workers, bar.add if bar else None), 1):
        for split_entry in manifest["splits"].values():
            for i, shard in enumerate(split_entry["shards"]):
                if shard["file"] == result["file"]:
                    split_entry["shards"][i] = result
        _totals(manifest)
        write_manifest(output, manifest)
        done_bytes += result.get("source_size", 0)
        if progress and echo and bar is None:
            wall = time.perf_counter() - start
            echo(f"[{number}/{len(jobs)}] {100 * done_bytes / total_bytes:5.1f}% "
                 f"{result['file']}: {result['records']:,} records, {result['tokens']:,} "
                 f"tokens from {result['source_file']} ({wall:.1f} s, "
                 f"{done_bytes / 1e6 / max(wall, 1e-9):.1f} MB/s)")
    if bar is not None:
        bar.finish(f"{len(jobs)} shard(s)")
    manifest["complete"] = True
    write_manifest(output, manifest)
    say(f"prepared {manifest['records']:,} records, {manifest['tokens']:,} tokens in "
        f"{sum(len(s['shards']) for s in manifest['splits'].values())} shard(s): {output}")
    return manifest


#: ``kplm.prepare_data``: the name on the public facade.
prepare_data = prepare


def _learned_with(path, tok_dir):
    """The record ``path`` holds of what the tokenizer in ``tok_dir`` was learned with (without
    its ``sha256``), or None when there is none or ``tok_dir`` is not the tokenizer it names."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict) or record.pop("sha256", None) != tokenizer_hash(tok_dir):
            return None
    except (OSError, ValueError, ConfigError):  # unreadable, or no tokenizer there
        return None
    return record


def _same_input(old, new):
    keys = ("source", "options", "source_file", "source_size", "source_mtime", "tokenizer_sha256")
    return all(old.get(k) == new.get(k) for k in keys) and "records" in old


def _shard_ok(output, shard):
    path = os.path.join(output, shard["file"])
    return os.path.isfile(path) and os.path.getsize(path) == shard.get("bytes")


def _totals(manifest):
    for split_entry in manifest["splits"].values():
        shards = split_entry["shards"]
        split_entry["records"] = sum(s.get("records", 0) for s in shards)
        split_entry["tokens"] = sum(s.get("tokens", 0) for s in shards)
    manifest["records"] = sum(s["records"] for s in manifest["splits"].values())
    manifest["tokens"] = sum(s["tokens"] for s in manifest["splits"].values())


def _run(jobs, workers, report=None):
    """Yield each job's finished shard entry, in completion order; ``report(nbytes)`` is called
    as the workers read (for the progress bar)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield tokenize_file(job, report)
        return
    import multiprocessing
    import multiprocessing.managers
    import queue
    # spawn, not fork: TensorFlow's threads do not survive a fork. Each helper process ends
    # when this one is gone (kill -9 leaves no worker writing shards, no manager running on).
    context = multiprocessing.get_context("spawn")
    manager = multiprocessing.managers.SyncManager(ctx=context)
    manager.start(exit_with_parent, (os.getpid(),))
    with manager, context.Pool(workers, exit_with_parent, (os.getpid(),)) as pool:
        reports = manager.Queue() if report is not None else None
        pending = [pool.apply_async(tokenize_file, (job, reports)) for job in jobs]
        while pending:
            if reports is not None:
                try:
                    while True:
                        report(reports.get(timeout=0.2))
                except queue.Empty:
                    pass
            else:
                pending[0].wait(0.2)
            for result in [r for r in pending if r.ready()]:
                pending.remove(result)
                yield result.get()


def exit_with_parent(parent):
    """In a helper process of ``parent``: exit at once when ``parent`` is gone (killed, it
    cannot stop its pool; its workers and manager would run on, unseen)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch, name="kplm-exit-with-parent", daemon=True).start()


def import_tensorflow():
    """Import TensorFlow (in the parent only to learn a tokenizer), its start-up chatter
    silenced as the CLI does."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from kplm.tf_import import import_tensorflow_quietly
    import_tensorflow_quietly()


# --- one file -> one shard (runs in a worker process) ------------------------------------------
def tokenize_file(job, report=None):
    """Tokenize one input file into its shard; return the shard's manifest entry. ``report``
    (a callable, or a queue from another process) receives the bytes of text read, batch by
    batch, for the progress bar."""
    import_tensorflow()
    import tensorflow as tf

    from kplm.plugins import get_registry

    registry = get_registry()
    section = {k: v for k, v in job["section"].items() if k != "name"}
    if job["path"] is not None:
        section["paths"] = [glob.escape(job["path"])]
    source = registry.get("data_source", job["section"]["name"])(**section)
    tokenizer = registry.get("tokenizer", job["tokenizer"]).load(job["tok_dir"])
    field = source.text_field
    texts = source.build().map(lambda example: example[field]).batch(BATCH)
    tokenize = tokenizer.build()
    ids = texts.map(lambda t: (tokenize(t), tf.reduce_sum(tf.strings.length(t)) + tf.size(t)),
                    num_parallel_calls=tf.data.AUTOTUNE).map(
        lambda r, n: (tf.cast(r.flat_values, tf.int64), r.row_splits, n)).prefetch(2)
    put = getattr(report, "put", report)

    entry = dict(job["entry"])
    final = os.path.join(job["output"], entry["file"])
    tmp = final + ".tmp"
    records = tokens = 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for flat, splits, nbytes in ids.as_numpy_iterator():
            for record in serialize_examples(flat, splits):
                writer.write(record)
            records += len(splits) - 1
            tokens += len(flat)
            if put is not None:
                put(int(nbytes))
    os.replace(tmp, final)
    entry.update(records=records, tokens=tokens, bytes=os.path.getsize(final))
    return entry


def serialize_examples(flat, row_splits):
    """Serialized ``tf.train.Example`` s ``{"ids": int64 list}``, one per row of a ragged batch
    (``flat`` values, ``row_splits``), encoded by hand: the same bytes as protobuf's, with the
    varints of the whole batch computed at once in numpy (several times faster than building
    messages). Layout: Example{features=1: Features{feature=1: entry{key=1: "ids", value=2:
    Feature{int64_list=3: Int64List{value=1: packed varints}}}}}.

    Example:
    >>> import numpy as np, tensorflow as tf
    >>> record = serialize_examples(np.array([5, 300]), np.array([0, 2]))[0]
    >>> record == tf.train.Example(features=tf.train.Features(feature={"ids": tf.train.Feature(
    ...     int64_list=tf.train.Int64List(value=[5, 300]))})).SerializeToString()
    True
    """
    import numpy as np

    v = np.asarray(flat).astype(np.uint64)
    nbytes = np.ones(v.shape, np.int64)  # 1 + floor(bit_length / 7) bytes per value
    for k in range(1, 10):
        nbytes += v >= (np.uint64(1) << np.uint64(7 * k))
    if v.size:
        width = int(nbytes.max())
        positions = np.arange(width)
        groups = ((v[:, None] >> (positions.astype(np.uint64) * np.uint64(7))[None, :])
                  & np.uint64(0x7F)).astype(np.uint8)
        groups |= np.where(positions[None, :] < nbytes[:, None] - 1, 0x80, 0).astype(np.uint8)
        data = groups[positions[None, :] < nbytes[:, None]].tobytes()
    else:
        data = b""
    offsets = np.concatenate([[0], np.cumsum(nbytes)])[np.asarray(row_splits)].tolist()
    out = []
    for begin, end in zip(offsets[:-1], offsets[1:]):
        packed = data[begin:end]
        int64_list = b"\x0a" + _varint(len(packed)) + packed if packed else b""
        feature = b"\x1a" + _varint(len(int64_list)) + int64_list
        entry = b"\x0a\x03ids\x12" + _varint(len(feature)) + feature
        features = b"\x0a" + _varint(len(entry)) + entry
        out.append(b"\x0a" + _varint(len(features)) + features)
    return out


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
