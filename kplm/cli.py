"""The ``kplm`` launcher: parse arguments, call a library function, print. Commands come from
plugins (built-in ones included) through the ``register_commands`` hook."""
import os
import sys

import click

from kplm import __version__
from kplm.errors import KplmError


class _Group(click.Group):
    """Runs commands so that a user mistake is one line on stderr, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KplmError as e:
            if os.environ.get("KPLM_DEBUG"):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(getattr(e, "exit_code", 1))
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kplm")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug):
    """Pretrain and fine-tune Transformer language models (TensorFlow + Keras 3).

    Configs are YAML files (see configs/); any key can be overridden with --set KEY=VALUE.
    """
    if debug:
        os.environ["KPLM_DEBUG"] = "1"


def _load_commands():
    from kplm.plugins import register_commands
    try:
        register_commands(cli)
    except KplmError as e:  # strict plugin mode: a broken plugin is an error
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)


_load_commands()


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    cli(prog_name="kplm")
