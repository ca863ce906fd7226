"""
What every script shares and no reader of the model needs: the user-error framework (one line,
exit 2, printed once under torchrun), the argument parser built on it, and the one atomic write.
No torch here, so that fineweb.py and every --help start fast.
"""

import argparse
import os
import sys


class UserError(Exception):
    """A mistake of the user's: a bad flag value, a missing or unusable file, no network for a
    download that was asked for. Every script's main() prints it as one line,
    `<script>: error: <message>`, and exits 2; any other exception is a bug of ours and keeps its
    traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the script's docstring as written and every flag's default after its help; a
    default of None (one that depends on other flags) is said in words in the help instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The argument parser of every script: argparse's own errors (an unknown flag, a number that
    is not one) are raised as UserError, so that they reach the user in one line like every other
    mistake."""

    def __init__(self, prog, description=None, **kwargs):
        super().__init__(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")


def exit_on_user_error(prog, fn, *args, **kwargs):
    """fn(*args, **kwargs), with a UserError turned into one line on stderr and exit status 2.
    Under torchrun every rank meets the same mistake, and only rank 0 prints it."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def write_atomic(path, data):
    """data at path (its folder made if need be): bytes, or a function that writes into the open
    binary file (torch.save, savefig). Written under path.tmp, flushed to disk and renamed: a crash or Ctrl-C mid-write
    leaves the previous file intact and never a half-written one under the real name, and a failed
    write removes its .tmp."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data) if isinstance(data, (bytes, bytearray)) else data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def one_line(e, n=300):
    """An exception's message on one line (transformers' span several), at most n characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= n else text[: n - 3] + "..."
