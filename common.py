"""
What every script shares and no reader of the model needs: the user-error framework (one line,
exit 2, printed once under torchrun), the argument parser built on it, and the one atomic write.
No torch here, so that fineweb.py and every --help start fast.
"""

import argparse
import copy
import errno
import os
import sys
import textwrap


class UserError(Exception):
    """A mistake of the user's: a bad flag value, a missing or unusable file, no network for a
    download that was asked for. Every script's main() prints it as one line,
    `<script>: error: <message>`, and exits 2; any other exception is a bug of ours and keeps its
    traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the script's docstring as written and every flag's default after its help, once;
    a default of None (one that depends on other flags) is said in words in the help instead. An
    on/off flag's default is shown as the flag that gives it (--compile, --no-compile) or off/on,
    never as Python's True/False. A help text with line breaks keeps them (a list, one item a line)."""

    def _get_help_string(self, action):
        # said in words already ("(default: off)"): a second, generated one would contradict or repeat it
        if action.default is None or "(default" in action.help.replace("(default: %(default)s)", ""):
            return action.help
        return super()._get_help_string(action)

    def _expand_help(self, action):
        if isinstance(action.default, bool) and action.option_strings:
            action = copy.copy(action)
            action.default = bool_default(action)
        return super()._expand_help(action)

    def _split_lines(self, text, width):
        # never inside a flag or a name (--no-\nrotary, gpt2-\n124m): at spaces only
        lines = []
        for line in text.splitlines() if "\n" in text else [" ".join(text.split())]:
            indent = line[: len(line) - len(line.lstrip())]
            lines += textwrap.wrap(line, width, subsequent_indent=indent + "  " if indent else "",
                                   break_on_hyphens=False) or [""]
        return lines


def bool_default(action):
    """How --help names an on/off flag's default: the flag that gives it, for a --x/--no-x pair, or
    on/off for a flag that only turns something on (store_true) or off (store_false)."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return next(s for s in action.option_strings if s.startswith("--no-") == (not action.default))
    return "on" if action.default == getattr(action, "const", None) else "off"


class ArgumentParser(argparse.ArgumentParser):
    """The argument parser of every script: argparse's own errors (an unknown flag, a number that
    is not one) are raised as UserError, so that they reach the user in one line like every other
    mistake."""

    def __init__(self, prog, description=None, **kwargs):
        # allow_abbrev off: --max_step 5 is a typo to report, not --max_steps 5 to guess
        super().__init__(prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False,
                         **kwargs)

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
    binary file (torch.save, savefig). Written under path.tmp, flushed to disk and renamed: a crash
    or Ctrl-C mid-write leaves the previous file intact and never a half-written one under the real
    name, and a failed write removes its .tmp. An OS error (disk full, read-only or missing folder, a file where a
    folder should be) is the user's situation: a UserError naming path."""
    make_dirs(os.path.dirname(os.path.abspath(path)))
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data) if isinstance(data, (bytes, bytearray)) else data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        error = os_error(e)
        if error is None:
            raise
        raise write_error(path, error) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def make_dirs(path):
    """os.makedirs(path, exist_ok=True), an OS error being a UserError naming path."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None


def os_error(e):
    """The OSError that e is or that caused it (torch.save reports a failed write as a
    RuntimeError raised while handling the OSError), or None."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def write_error(path, e):
    """The one line for OSError e met while writing path: what happened and what to do."""
    return UserError(f"cannot write {path}: {os_reason(e)}; nothing there was replaced")


def os_reason(e):
    """What OSError e means for the user and what to do, with its errno's name."""
    what = {errno.ENOSPC: "the disk is full: free some space or write elsewhere",
            errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
            errno.EROFS: "the file system is read-only: write elsewhere",
            errno.EACCES: "permission denied: fix the folder's permissions or write elsewhere",
            errno.EPERM: "permission denied: fix the folder's permissions or write elsewhere",
            errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
            errno.EEXIST: "it is a file, not a folder: choose another path"}.get(e.errno)
    return f"{what or e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})"


def check_writable(path, flag, folder=False):
    """Refuse, before any work, an output path under a file (--out a/b.json where a is a file), or
    for a folder (folder=True) a path that is a file."""
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a folder; choose another path")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent != os.path.abspath(path) and not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")


def one_line(e, n=300):
    """An exception's message on one line (transformers' span several), at most n characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= n else text[: n - 3] + "..."
