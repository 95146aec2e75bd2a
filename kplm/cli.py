"""The ``kplm`` launcher: parse arguments, call a library function, print. Commands come from
plugins (built-in ones included) through the ``register_commands`` hook."""
import errno
import os
import sys
import warnings

import click

from kplm import __version__
from kplm.errors import KplmError, KplmWarning, clip, describe


#: OSErrors a user causes (a path missing, unreadable, of the wrong kind, a full or read-only
#: disk): the CLI reports them as one line naming the file, as a last line of defence.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                errno.EEXIST, errno.ENOTEMPTY, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EFBIG,
                errno.EXDEV, errno.EBUSY, errno.ETXTBSY}


def _debug():
    return bool(os.environ.get("KPLM_DEBUG"))


def _error(message, ctx, code):
    """Print ``Error: message`` as one line on stderr and exit with ``code``."""
    click.echo(f"Error: {clip(message, 2000)}", err=True)
    ctx.exit(code)


def _os_error_message(e):
    where = e.filename if e.filename is not None else ""
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    reason = e.strerror or describe(e)
    return f"{where}: {reason}" if where else reason


class _Group(click.Group):
    """Runs commands so that a user mistake is one line on stderr, not a traceback: a
    ``KplmError``, a usage error (bad option or argument), or an ``OSError`` a user causes."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:  # kplm's own options
            if _debug():
                raise
            _error(f"{e.format_message()} (see 'kplm --help')", ctx, e.exit_code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a command's options and arguments
            if _debug():
                raise
            path = e.ctx.command_path if e.ctx is not None else "kplm"
            _error(f"{e.format_message()} (see '{path} --help')", ctx, e.exit_code)
        except KplmError as e:
            if _debug():
                raise
            _error(str(e), ctx, getattr(e, "exit_code", 1))
        except OSError as e:
            if _debug() or not (e.errno in _USER_ERRNOS or e.filename is not None):
                raise
            _error(_os_error_message(e), ctx, 1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except Exception as e:  # a bug: a plugin's is named, kplm's shows its traceback
            from kplm.plugins import plugin_in_traceback
            plugin = None if _debug() else plugin_in_traceback(e.__traceback__)
            if plugin is None:
                raise
            _error(f"plugin {plugin} failed: {type(e).__name__}: {describe(e)} (a bug in the "
                   "plugin; kplm --debug ... shows where)", ctx, 1)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """kplm's own warnings are one ``Warning:`` line; others as Python shows them."""
    if issubclass(category, KplmWarning):
        click.echo(f"Warning: {clip(message, 2000)}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning
warnings.showwarning = _show_warning


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
        click.echo(f"Error: {clip(e, 2000)}", err=True)
        sys.exit(1)


_load_commands()


def main():
    # TensorFlow's C++ log (oneDNN notes, finalizer chatter) is not kplm's output; --debug keeps
    # its errors.
    debug = "--debug" in sys.argv[1:] or _debug()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if debug else "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    cli(prog_name="kplm")
