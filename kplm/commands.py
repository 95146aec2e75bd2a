"""Built-in commands: ``pretrain``, ``tokenizer train``, ``plugins``. Registered through the same
``register_commands`` hook that third-party plugins use. TensorFlow is imported only inside the
commands that train."""
import json
import os

import click

from kplm.hookspecs import hookimpl
from kplm.tf_import import import_tensorflow_quietly


def protecting(paths):
    from kplm.outputs import protecting as protect  # (no TensorFlow)
    return protect(paths)


def _config(path, overrides):
    from kplm.config import apply_overrides, load_yaml
    return apply_overrides(load_yaml(path), overrides)


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set trainer.steps=100 (repeatable).")


def _check_file_output(output, rule, may_be_ours):
    """Refuse a bad ``--output`` file before any work (``kplm.outputs.check_output``). An
    existing file without ``--overwrite`` that ``may_be_ours(text)`` (what this very command
    writes, as far as can be told before the work: the same command run again after a kill
    that followed the rename) waits for ``_write_file_output``, which leaves it as it is when it
    holds exactly what would be written and refuses it otherwise."""
    from kplm.outputs import check_output
    waits = False
    if not rule["overwrite"] and os.path.isfile(output):
        try:
            with open(output, encoding="utf-8") as f:
                waits = bool(may_be_ours(f.read()))
        except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: not this output
            waits = False
    check_output(output, **{**rule, "overwrite": rule["overwrite"] or waits})


def _holds_predictions_of(text, given):
    """Whether ``text`` may be ``kplm predict``'s output for the input lines ``given``: one JSON
    object per non-blank line, holding its number and text(s)."""
    lines = [(number, line) for number, line in given if line.strip()]
    rows = [json.loads(row) for row in text.splitlines()]
    return len(rows) == len(lines) and all(
        isinstance(row, dict) and row.get("input_line") == number
        and set(line.split("\t")) <= set(map(str, row.values()))
        for row, (number, line) in zip(rows, lines))


def _write_file_output(output, rule, text):
    """Write ``text`` to ``output`` atomically; False (nothing written) where the file holds
    exactly ``text`` already."""
    from kplm.outputs import atomic_output, check_output, clean_stale
    if not rule["overwrite"] and os.path.isfile(output):
        with open(output, "rb") as f:
            if f.read() == text.encode("utf-8"):
                clean_stale(output)  # a temporary a kill before the rename left
                return False
        check_output(output, **rule)  # another output there: refused, as without the wait
    with atomic_output(output, **rule) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return True


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def pretrain(config, overrides, overwrite):
    """Pretrain a backbone as the YAML CONFIG says."""
    raw = _config(config, overrides)  # YAML errors before TensorFlow's seconds of import
    import_tensorflow_quietly()
    from kplm.training.pretrain import pretrain as run
    with protecting([config]):  # --overwrite never replaces the directory of the config itself
        metrics = run(raw, overwrite=overwrite, echo=click.echo)
    click.echo(json.dumps({"train": metrics["train"], "validation": metrics["validation"]}))


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def finetune(config, overrides, overwrite):
    """Fine-tune a head (on init_from's pretrained backbone) as the YAML CONFIG says."""
    raw = _config(config, overrides)  # YAML errors before TensorFlow's seconds of import
    import_tensorflow_quietly()
    from kplm.training.finetune import finetune as run
    with protecting([config]):
        metrics = run(raw, overwrite=overwrite, echo=click.echo)
    click.echo(json.dumps({k: v for k, v in metrics.items() if k in ("validation", "test")}))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", "paths", multiple=True, required=True,
              help="Labelled file(s) in the format of the run's validation data (repeatable).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Where to write the metrics (default RUN_DIR/metrics.json, key 'evaluate'); "
                   "a new file in an existing folder (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace the --output file if it exists.")
def evaluate(run_dir, paths, output, overwrite):
    """Evaluate a fine-tuned RUN_DIR on labelled data; print and write the metrics."""
    rule = dict(what="--output", file=True, overwrite=overwrite, inputs=[run_dir, *paths])
    if output is not None:  # before the model is loaded ('' is refused: an empty path)
        _check_file_output(output, rule, lambda text: isinstance(found := json.loads(text), dict)
                           and found.get("data") == list(paths))
    else:  # the run's metrics.json takes the result: read (and check) it before evaluating
        from kplm.errors import KplmError
        from kplm.runs import CONFIG, METRICS, read_json
        path = os.path.join(run_dir, METRICS)
        if not os.path.exists(path) and os.path.exists(os.path.join(run_dir, CONFIG)):
            # a run killed before its end: a metrics.json made here would mark it finished,
            # and its own command would then never finish it (its validation, best weights)
            raise KplmError(f"{run_dir} has no metrics.json: the run did not finish; run its "
                            "kplm finetune command again to finish it, or write these "
                            "metrics elsewhere with -o FILE")
        existing = read_json(path, "the run's metrics") if os.path.exists(path) else {}
        if not isinstance(existing, dict) or not isinstance(existing.get("evaluate", {}), dict):
            raise KplmError(f"{path}: expected a JSON object of the run's metrics")
    import_tensorflow_quietly()
    from kplm.runs import json_text, write_json
    from kplm.runs import FinetunedRun
    run = FinetunedRun(run_dir)
    metrics = run.evaluate(run.source(paths))
    result = {"data": list(paths), **metrics}
    if output is not None:
        if not _write_file_output(output, rule, json_text(result)):
            click.echo(f"{output} already holds these metrics: nothing to do", err=True)
    else:
        existing.setdefault("evaluate", {})[",".join(paths)] = metrics
        write_json(path, existing)
    click.echo(json.dumps(result))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--input", "-i", "input_path", type=click.File("rb"), default="-",
              help="One example per line (no TAB in it); two-input heads take "
                   "FIRST<TAB>SECOND (QA: QUESTION<TAB>CONTEXT); - is stdin.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write JSON lines here instead of stdout: a new file in an existing folder "
                   "(written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace the --output file if it exists.")
def predict(run_dir, input_path, output, overwrite):
    """Predict with a fine-tuned RUN_DIR; writes one JSON object per non-blank input line
    (blank lines are skipped), its number in "input_line"."""
    rule = dict(what="--output", file=True, overwrite=overwrite,
                inputs=[run_dir, getattr(input_path, "name", None)])
    from kplm.data.files import input_lines, shown_input
    name = shown_input(getattr(input_path, "name", "-"))  # stdin under click.testing: no name
    given = list(input_lines(input_path, name))  # UTF-8, checked before loading
    if output is not None:  # before the model is loaded ('' is refused: an empty path)
        _check_file_output(output, rule, lambda text: _holds_predictions_of(text, given))
    import_tensorflow_quietly()
    from kplm.errors import DataError
    from kplm.runs import FinetunedRun
    run = FinetunedRun(run_dir)
    head = run.head
    examples, numbers = [], []
    for number, line in given:
        if not line.strip():
            continue
        numbers.append(number)
        if head.pair_field:
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(f"{name}:{number}: expected "
                                f"{head.text_field.upper()}<TAB>{head.pair_field.upper()}")
            examples.append({head.text_field: parts[0], head.pair_field: parts[1]})
        elif "\t" in line:  # a TSV row (its header, an index column) read as one text
            raise DataError(f"{name}:{number}: a TAB in the line, but this head takes one text "
                            "per line; give a TSV file's text column alone (cut -f N FILE)")
        else:
            examples.append({head.text_field: line})
    lines = [json.dumps({"input_line": number, **ex, **p}, ensure_ascii=False)
             for number, ex, p in zip(numbers, examples, run.predict(examples))]
    if output is not None:
        if not _write_file_output(output, rule, "".join(line + "\n" for line in lines)):
            click.echo(f"{output} already holds these predictions: nothing to do", err=True)
    else:
        for line in lines:
            click.echo(line)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["saved_model", "keras_hub", "hf"]),
              default="saved_model", show_default=True,
              help="saved_model: a fine-tuned run for serving, raw strings in; keras_hub: the "
                   "backbone + tokenizer as a keras-hub preset; hf: as a Hugging Face BertModel "
                   "directory.")
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Directory to write (default: RUN_DIR/export/FORMAT): new or empty; written "
                   "under a temporary name and renamed when complete (the same command again "
                   "finds it done).")
@click.option("--overwrite", is_flag=True,
              help="Replace a previous export of the same format in OUTPUT (never other files, "
                   "a run, a checkpoint or prepared shards).")
def export(run_dir, fmt, output, overwrite):
    """Export RUN_DIR for serving (a SavedModel) or as a keras-hub / Hugging Face checkpoint.

    RUN_DIR is a fine-tuned run; for --format keras_hub or hf it may also be a pretraining run,
    a keras-hub preset or a Hugging Face directory (converting between the formats)."""
    import hashlib

    from kplm.outputs import check_output, source_state, stamped
    from kplm.pretrained.huggingface import HF_EXPORT_NAMES
    from kplm.pretrained.presets import PRESET_NAMES
    from kplm.serving import SAVED_MODEL_NAMES
    output = output if output is not None else os.path.join(run_dir, "export", fmt)
    from kplm.pretrained.bart import EXPORT_NAMES as BART_EXPORT_NAMES
    from kplm.pretrained.t5 import EXPORT_NAMES as T5_EXPORT_NAMES
    names = {"saved_model": SAVED_MODEL_NAMES, "keras_hub": PRESET_NAMES,
             "hf": tuple(sorted(set(HF_EXPORT_NAMES) | set(BART_EXPORT_NAMES)
                                | set(T5_EXPORT_NAMES)))}
    # the same command again on its complete export (killed after the rename): nothing to do
    where = hashlib.sha256(os.path.realpath(run_dir).encode("utf-8")).hexdigest()
    record = {"format": fmt, "source": where, "source_state": source_state(run_dir)}
    if not overwrite and stamped(output, record):
        click.echo(f"{output} already holds this export of {run_dir} ({fmt}): nothing to do "
                   "(--overwrite exports it again)")
        return
    check_output(output, what="--output", overwrite=overwrite, inputs=[run_dir],
                 names=names[fmt])  # before anything is loaded
    import_tensorflow_quietly()
    if fmt == "saved_model":
        from kplm.serving import export_saved_model
        export_saved_model(run_dir, output, echo=click.echo, overwrite=overwrite, stamp=record)
        return
    from kplm.runs import HEAD_CONFIG, FinetunedRun
    if os.path.exists(os.path.join(run_dir, HEAD_CONFIG)):
        run = FinetunedRun(run_dir)
        backbone, tok = run.model.backbone, run.tokenizer
    else:
        from kplm.pretrained import load_pretrained
        backbone, tok = load_pretrained(run_dir, key="RUN_DIR")
    if fmt == "keras_hub":
        from kplm.pretrained.presets import save_preset
        save_preset(backbone, tok, output, overwrite=overwrite, inputs=[run_dir],
                    stamp=record)
    else:
        from kplm.models.t5 import T5EncoderDecoder
        if isinstance(backbone, T5EncoderDecoder):
            from kplm.pretrained.t5 import export_t5
            export_t5(backbone, tok, output, overwrite=overwrite, inputs=[run_dir],
                      stamp=record)
        elif getattr(backbone, "family", None) == "encoder_decoder":
            from kplm.pretrained.bart import export_bart
            export_bart(backbone, tok, output, overwrite=overwrite, inputs=[run_dir],
                        stamp=record)
        else:
            from kplm.pretrained.huggingface import export_bert
            export_bert(backbone, tok, output, overwrite=overwrite, inputs=[run_dir],
                        stamp=record)
    click.echo(f"exported the backbone and tokenizer of {run_dir} to {output} ({fmt})")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--prompt", "prompts", multiple=True, help="A prompt to continue (repeatable).")
@click.option("--file", "prompt_file", type=click.File("rb"),
              help="Prompts, one per line (- is stdin).")
@click.option("--sampler", type=click.Choice(["greedy", "top_k", "top_p", "beam"]),
              default="greedy", show_default=True)
@click.option("--max-length", type=int, help="Tokens per sequence, prompt included "
              "(default: the backbone's sequence_length).")
@click.option("--top-k", type=int, help="top_k: candidates per step; top_p: at most this many.")
@click.option("--top-p", type=float, help="top_p: probability mass kept.")
@click.option("--num-beams", type=int, help="beam: beams kept.")
@click.option("--temperature", type=float, help="Divide the logits by this (default 1).")
@click.option("--seed", type=int, help="Random seed of top_k / top_p sampling.")
@click.option("--no-cache", is_flag=True,
              help="Recompute the whole prefix at every step (slow; same tokens).")
def generate(run_dir, prompts, prompt_file, sampler, max_length, top_k, top_p, num_beams,
             temperature, seed, no_cache):
    """Continue prompts with a causal_lm pretraining RUN_DIR; one JSON line per prompt."""
    from kplm.errors import KplmError, require_utf8_argument
    prompts = list(prompts)
    for number, prompt in enumerate(prompts, 1):
        require_utf8_argument(prompt, f"--prompt {number}")
    if prompt_file is not None:
        from kplm.data.files import input_lines
        name = getattr(prompt_file, "name", "-")  # stdin under click.testing has no name
        prompts += [line for _, line in input_lines(prompt_file, name) if line.strip()]
    if not prompts:
        raise KplmError("no prompt: give --prompt TEXT or --file PROMPTS.txt")
    import_tensorflow_quietly()
    from kplm.generation import generate_ids, load_generator, texts_and_completions
    model, tok = load_generator(run_dir)
    out = generate_ids(model, tok, prompts,
                       max_length=model.backbone.sequence_length if max_length is None
                       else max_length,
                       sampler=sampler, use_cache=not no_cache, k=top_k, p=top_p,
                       num_beams=num_beams, temperature=temperature, seed=seed)
    texts, completions = texts_and_completions(tok, out)
    for prompt, text, completion in zip(prompts, texts, completions):
        click.echo(json.dumps({"prompt": prompt, "text": text, "completion": completion},
                              ensure_ascii=False))


@click.group()
def tokenizer():
    """Learn tokenizers from a config's data."""


@tokenizer.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory to write the tokenizer (its vocabulary and tokenizer.json) into: "
                   "new or empty, written under a temporary name and renamed when complete.")
@click.option("--kind", help="Tokenizer kind to learn (wordpiece, sentencepiece, ...), instead "
              "of the config's tokenizer.name; the section's options that kind takes are kept.")
@click.option("--overwrite", is_flag=True,
              help="Replace a tokenizer OUTPUT holds (never other files).")
def tokenizer_train(config, overrides, output, kind, overwrite):
    """Learn a vocabulary from CONFIG's data.train with CONFIG's tokenizer section."""
    raw = _config(config, overrides)  # YAML errors before TensorFlow's seconds of import
    import_tensorflow_quietly()
    from kplm.tokenizers.train import train_tokenizer
    with protecting([config]):
        tokens = train_tokenizer(raw, output, kind=kind, overwrite=overwrite)
    if tokens is None:
        click.echo(f"{output} already holds the tokenizer this config learns from these files: "
                   "nothing to do (--overwrite learns it again)")
        return
    click.echo(f"wrote {len(tokens):,} tokens to {output}")


@click.group()
def data():
    """Prepare corpora for training."""


@data.command("prepare")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory to write the shards, manifest.json and tokenizer/ into.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Processes tokenizing files in parallel (default: min(CPUs, files)).")
@click.option("--overwrite", is_flag=True,
              help="Start again: replace the prepared shards in OUTPUT (never other files).")
@click.option("--quiet", is_flag=True, help="No line per finished shard.")
def data_prepare(config, overrides, output, workers, overwrite, quiet):
    """Tokenize CONFIG's data.train (and data.validation) once into TFRecord shards; resumable.

    Train on them with data: {train: {name: tfrecord, path: OUTPUT}} and tokenizer:
    {name: KIND, vocabulary: OUTPUT/tokenizer}."""
    from kplm.data.prepare import prepare  # imports TensorFlow where it is needed
    with protecting([config]):
        prepare(_config(config, overrides), output, overwrite=overwrite, echo=click.echo,
                progress=not quiet, workers=workers)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Include built-in plugins.")
def plugins(as_json, show_all):
    """List installed plugins, their versions and what each registered."""
    from kplm.plugins import list_plugins, plugin_failures
    rows = [r for r in list_plugins() if show_all or not r["builtin"]]
    failures = [f.to_dict() for f in plugin_failures()]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "failed": failures}, indent=2))
        return
    if not rows:
        click.echo("No third-party plugins installed (kplm plugins --all shows the built-in ones).")
    else:
        click.echo(f"{'PLUGIN':32} {'DISTRIBUTION':22} {'VERSION':10} COMPONENTS")
        for r in rows:
            parts = [f"{kind}: {', '.join(names)}" for kind, names in r["components"].items()]
            if r["adds_commands"]:
                parts.append("commands")
            click.echo(f"{r['name']:32} {r['distribution']:22} {r['version']:10} "
                       f"{'; '.join(parts) or '-'}")
    for f in failures:
        click.echo(f"FAILED {f['name']} ({f['distribution']}): {f['error']}", err=True)


@click.command("runs")
@click.argument("directory", default="runs", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead of a table.")
def runs_command(directory, as_json):
    """A table of the training runs at or under DIRECTORY (default: runs): kind, status
    (finished, running, failed or interrupted at step N), steps, best validation metric,
    tokens/s, wall time and where each was initialised from."""
    from kplm.errors import KplmError
    from kplm.outputs import show
    from kplm.run_summary import find_runs, format_table, summarize
    if not os.path.isdir(directory):
        raise KplmError(f"runs: {show(directory)} is not a directory")
    found = find_runs(directory)
    if not found:
        raise KplmError(f"runs: no kplm run (config.yaml with checkpoints, scalars or "
                        f"metrics.json) at or under {show(directory)}")
    rows = [summarize(r) for r in found]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
    else:
        click.echo(format_table(rows, root=directory))


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (one self-contained page).")
@click.option("--title", help="The page's title (default: the runs' names).")
@click.option("--overwrite", is_flag=True, help="Replace the --output file if it exists.")
def report(run_dirs, output, title, overwrite):
    """One HTML page that puts RUN_DIRS side by side: their table, the config keys that
    differ, final metrics, and the loss, learning-rate, validation and throughput curves from
    their TensorBoard logs. Self-contained: opens offline."""
    from kplm.errors import KplmError
    from kplm.outputs import atomic_output, check_output, show
    from kplm.run_summary import is_run
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            raise KplmError(f"report: {show(run_dir)} is not a directory")
        if not is_run(run_dir):
            raise KplmError(f"report: {show(run_dir)} is not a kplm run directory (expected "
                            "config.yaml with checkpoints/, tensorboard/ or metrics.json)")
    rule = dict(what="--output", file=True, overwrite=overwrite, inputs=list(run_dirs))
    check_output(output, **rule)
    from kplm.report import render
    page = render(list(run_dirs), title=title)
    with atomic_output(output, **rule) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    click.echo(f"wrote {output} ({len(run_dirs)} run{'s' if len(run_dirs) > 1 else ''})")


@hookimpl
def register_commands(cli):
    cli.add_command(pretrain)
    cli.add_command(finetune)
    cli.add_command(evaluate)
    cli.add_command(predict)
    cli.add_command(generate)
    cli.add_command(export)
    cli.add_command(tokenizer)
    cli.add_command(data)
    cli.add_command(plugins)
    cli.add_command(runs_command)
    cli.add_command(report)
