"""Built-in commands: ``pretrain``, ``tokenizer train``, ``plugins``. Registered through the same
``register_commands`` hook that third-party plugins use. TensorFlow is imported only inside the
commands that train."""
import json
import os

import click

from kplm.hookspecs import hookimpl


def import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) sent to /dev/null,
    which TF_CPP_MIN_LOG_LEVEL cannot silence; ``--debug`` keeps it."""
    import sys
    if "tensorflow" in sys.modules or os.environ.get("KPLM_DEBUG"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _config(path, overrides):
    from kplm.config import apply_overrides, load_yaml
    return apply_overrides(load_yaml(path), overrides)


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set trainer.steps=100 (repeatable).")


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def pretrain(config, overrides, overwrite):
    """Pretrain a backbone as the YAML CONFIG says."""
    import_tensorflow_quietly()
    from kplm.training.pretrain import pretrain as run
    metrics = run(_config(config, overrides), overwrite=overwrite, echo=click.echo)
    click.echo(json.dumps({"train": metrics["train"], "validation": metrics["validation"]}))


@click.group()
def tokenizer():
    """Learn and inspect tokenizers."""


@tokenizer.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory to write the tokenizer (vocab.txt, tokenizer.json) into.")
def tokenizer_train(config, overrides, output):
    """Learn a vocabulary from CONFIG's data.train with CONFIG's tokenizer section."""
    import_tensorflow_quietly()
    from kplm.tokenizers.train import train_tokenizer
    tokens = train_tokenizer(_config(config, overrides), output)
    click.echo(f"wrote {len(tokens):,} tokens to {os.path.join(output, 'vocab.txt')}")


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


@hookimpl
def register_commands(cli):
    cli.add_command(pretrain)
    cli.add_command(tokenizer)
    cli.add_command(plugins)
