"""
Text into GPT-2 token shards for train_gpt2.py: FineWeb-Edu from Hugging Face, local files, or
an embedded offline corpus (CPython's own reference documentation).

FineWeb-Edu's 10B-token sample (needs a network; about 100 shards of 100M tokens):

    python fineweb.py                                   # -> edu_fineweb10B/
    python fineweb.py --config sample-100BT             # -> edu_fineweb100B/
    python fineweb.py --dataset HuggingFaceFW/fineweb   # -> fineweb10B/
    python fineweb.py --streaming                       # read from the Hub as it goes, no local copy

Local files (.jsonl/.json with a "text" field, also gzipped, .parquet with a "text" column, text
files .txt/.rst/.md one document per file, also gzipped) and folders (their text files, all levels
down, sorted; other files are skipped and counted):

    python fineweb.py --input "corpus/*.jsonl" more.parquet --out_dir data/mine --val_tokens 1000000

Debian's Linux kernel documentation (5,127 .rst.gz/.txt.gz documents, 10.2M tokens, GPL-2.0), the
offline corpus the recipe comparison (compare_recipes.py) trains on; not the package's whole folder,
whose html/_sources holds a copy of every .rst:

    cd /tmp && apt-get download linux-doc-6.1 && dpkg-deb -x linux-doc-6.1_*.deb /tmp/linuxdoc && cd -
    python fineweb.py --input /tmp/linuxdoc/usr/share/doc/linux-doc-6.1/Documentation --out_dir data/linuxdoc --val_tokens 262144

The embedded offline corpus, CPython's bundled reference documentation (pydoc_data.topics, one
document per topic, about 139k tokens on Python 3.11); no network, a few seconds:

    python fineweb.py --embedded                        # -> data/pydoc/

Shards made by another tool in the same format (llm.c, modded-nanogpt) train as they are, each
whole by its header; a manifest.json records their documents and largest ids (checked up front):

    python fineweb.py --index llm.c/dev/data/edu_fineweb10B

Tokenizer throughput of this pipeline against plain tiktoken on the same documents and workers:

    python fineweb.py --embedded --benchmark

Every document becomes [<|endoftext|>] + encode_ordinary(text). The first shard (--val_tokens) is
validation, the rest train; the set and its manifest.json reach --out_dir only once complete.
The format (shards.py) is llm.c's; the end of --help says how to write shards for llm.c and
modded-nanogpt.
"""

import collections
import contextlib
import errno
import fcntl
import fnmatch
import glob
import gzip
import itertools
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
import zlib

import numpy as np

from common import ArgumentParser, UserError, exit_on_user_error, os_reason, write_atomic
from shards import MANIFEST, REPLACING, SHARD_GLOBS, TOKEN_DTYPE, first_three, load_shard, read_manifest, save_manifest, shard_entry, write_manifest, write_shard
from tokenizer import get_tokenizer


# -----------------------------------------------------------------------------
# sources: each is an iterator of document strings, in a fixed order

DEFAULT_DATASET = "HuggingFaceFW/fineweb-edu"
DEFAULT_CONFIG = "sample-10BT"
EMBEDDED_NAME = "CPython's bundled reference documentation (pydoc_data.topics), one document per topic"
# local file types: record files, read by the `datasets` packaged loader named here (which also
# decompresses .jsonl.gz/.json.gz), and plain text, one document per file, read by read_text_file
RECORD_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".jsonl.gz": "json", ".json.gz": "json"}
TEXT_TYPES = (".txt", ".rst", ".md", ".txt.gz", ".rst.gz", ".md.gz")
LOCAL_TYPES = (".jsonl/.json (a 'text' field; also .gz), .parquet (a 'text' column), or text, one document per file: "
               ".txt/.rst/.md (also .gz); a folder: its text files, all levels down")


class InputError(UserError, ValueError):
    """A flag, input or output folder that fineweb.py cannot make shards from; the message says
    which flag or file, and why."""


def embedded_documents():
    """CPython's reference documentation as shipped with every CPython (the text behind help('if')):
    one document per topic, in sorted topic order. Its size depends on the Python version."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise InputError(
            "this Python has no pydoc_data.topics (CPython's bundled reference docs), which --embedded "
            "reads; some Linux distributions package it separately (e.g. Debian's libpythonX.Y-stdlib): "
            "install it, or use --input with local text files"
        ) from e
    return [topics[k] for k in sorted(topics)]


def _text_batches(ds, what):
    """The 'text' values of a `datasets` dataset (streaming or not), checked, in order."""
    if ds.column_names is not None:
        if "text" not in ds.column_names:
            raise InputError(f"{what} has no 'text' field (it has {ds.column_names}); each record needs its document in 'text'")
        ds = ds.select_columns(["text"])  # don't decode the other columns
    i = 0
    for batch in ds.iter(batch_size=256):
        if "text" not in batch:
            raise InputError(f"{what} has no 'text' field (records have {sorted(batch)}); each record needs its document in 'text'")
        for text in batch["text"]:
            if not isinstance(text, str):
                raise InputError(f"{what}: record {i} has 'text' = {text!r}, expected a string")
            yield text
            i += 1


def local_type(path):
    """What --input reads a file as: "text" (one document per file), the `datasets` loader of a
    record file, or None. By the name's last two suffixes, so that docs.rst.gz is gzip-compressed
    text and changelog.Debian.gz is not text."""
    ext = file_type(path)
    return "text" if ext in TEXT_TYPES else RECORD_LOADERS.get(ext)


def file_type(path):
    """A file's type by its name: its suffix, or its last two if the last is .gz (.rst.gz)."""
    name = os.path.basename(path).lower()
    compressed = name.endswith(".gz")
    return os.path.splitext(name[:-3] if compressed else name)[1] + (".gz" if compressed else "")


def folder_files(folder):
    """The text files (TEXT_TYPES) under folder, all levels down, sorted by path, and a count of
    what was skipped by type. Record files are skipped too: a folder of them often holds other
    .json files that are no training data (the `datasets` cache's dataset_info.json, state.json);
    name or glob those."""
    files, skipped = [], collections.Counter()
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):  # os.walk does not follow it: say so
                skipped["links to folders"] += 1
        for name in names:
            path = os.path.join(root, name)
            if local_type(path) == "text" and os.path.isfile(path):
                files.append(path)
            else:
                skipped[file_type(name) or "no extension"] += 1
    return sorted(files), skipped


def expand_inputs(patterns):
    """The files named by --input: each pattern a path, a glob (matches sorted) or a folder (its
    text files, sorted; folder_files), in the order given. What a folder skips is printed."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"--input {pattern} matches no file")
        elif os.path.isdir(pattern):
            matches, skipped = folder_files(pattern)
            top = skipped.most_common(8)
            other = ", ".join(f"{n} {ext}" for ext, n in top) + (f", {len(skipped) - len(top)} more types" if len(skipped) > len(top) else "")
            if not matches:
                raise InputError(f"--input {pattern} is a folder with no text files ({', '.join(TEXT_TYPES)}) in it"
                                 f"{' (it holds ' + other + ')' if other else ''}; name record files (.jsonl, .parquet) "
                                 f"or a glob, e.g. --input '{os.path.join(pattern, '*.jsonl')}'")
            print(f"--input {pattern}: {len(matches):,} text files; skipped {sum(skipped.values()):,} others"
                  f"{' (' + other + ')' if other else ''}")
        elif not os.path.isfile(pattern):
            raise InputError(f"--input {pattern}: no such file")
        else:
            matches = [pattern]
        for path in matches:
            if local_type(path) is None:
                ext = os.path.splitext(path)[1].lower()
                raise InputError(f"--input {path}: cannot read '{ext}' files; expected {LOCAL_TYPES}")
        files.extend(matches)
    return files


def read_text_file(path):
    """A text file's content as one document, decompressed if its name ends in .gz. Read as
    UTF-8 with newlines as they are (a CRLF stays CRLF), so the tokens are those of the file."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"--input {path}: cannot read it as UTF-8 text ({type(e).__name__}: {e})") from e
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut-off gzip is an EOFError
        what = "gzip-compressed text" if opener is gzip.open else "text"
        raise InputError(f"--input {path}: cannot read it as {what} ({type(e).__name__}: {e})") from e


def local_documents(files):
    """Documents of local files, in file order: a text file is one document (read_text_file),
    record files go through `datasets`' packaged loaders in streaming mode: one pass, nothing
    converted to an Arrow cache, memory bounded whatever the file size. A file that cannot be
    read raises InputError naming it."""
    read_errors = None
    for path in files:
        loader = local_type(path)
        if loader == "text":
            yield read_text_file(path)  # every file is one document, even an empty one
            continue
        if read_errors is None:  # imported only for record files: a folder of text needs none of it
            import datasets
            import pyarrow

            datasets.disable_progress_bars()
            # a file it cannot parse is reported by InputError below, in one line; `datasets` would also log it
            datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
            # what the packaged loaders raise on a file that is not what its name says (a broken JSON
            # line, a file that is not Parquet or not gzip, text that is not UTF-8)
            read_errors = (pyarrow.ArrowException, UnicodeDecodeError, json.JSONDecodeError,
                           datasets.exceptions.DatasetsError, OSError, EOFError, zlib.error)
        if os.path.getsize(path) == 0:
            continue  # holds no records (the json loader fails on it with a bare StopIteration)
        try:
            ds = datasets.load_dataset(loader, data_files=[path], split="train", streaming=True)
            yield from _text_batches(ds, f"--input {path}")
        except read_errors as e:
            raise InputError(f"--input {path}: cannot read it as {loader} ({type(e).__name__}: {e}); expected {LOCAL_TYPES}") from e


def hf_documents(dataset=DEFAULT_DATASET, config=DEFAULT_CONFIG, streaming=False):
    """Documents of a Hugging Face dataset's train split. Without streaming, `datasets` first
    downloads it and converts it to a memory-mapped Arrow cache; with streaming, it is read from
    the Hub as we go."""
    import datasets

    what = f"--dataset {dataset} --config {config}"
    offline = ("without a network, make shards from local files (--input FILES --out_dir DIR) or from the "
               "embedded offline corpus (--embedded); with the dataset already in the Hugging Face cache, "
               "set HF_HUB_OFFLINE=1")
    # without a network, huggingface_hub tries the Hub 6 times over about 25 s and logs a warning for
    # each try; the InputError below says what matters in one line
    http_log = logging.getLogger("huggingface_hub.utils._http")
    level = http_log.level
    http_log.setLevel(logging.ERROR)
    try:
        ds = datasets.load_dataset(dataset, name=config, split="train", streaming=streaming)
    except ConnectionError as e:  # what `datasets` raises when the Hub cannot be reached, or offline mode is on
        raise InputError(f"cannot download {what}: {e}. The download needs the network; {offline}") from e
    except FileNotFoundError as e:  # DatasetNotFoundError, or a --dataset that is neither on the Hub nor a folder
        raise InputError(f"--dataset {dataset}: {e}") from e
    except ValueError as e:  # an unknown --config: `datasets` lists the ones there are
        raise InputError(f"{what}: {e}") from e
    finally:
        http_log.setLevel(level)
    try:
        yield from _text_batches(ds, what)
    except ConnectionError as e:  # the network lost on the way (with --streaming, read from the Hub throughout)
        raise InputError(f"lost the connection while reading {what}: {e}; run it again") from e


# -----------------------------------------------------------------------------
# tokenization: chunks of documents to worker processes, results back in document order


def tokenize_docs(texts):
    """[EOT] + encode_ordinary(text) for each text, concatenated, as uint16 (write_shards has checked
    that the vocabulary fits). Runs in the workers."""
    enc = get_tokenizer()
    eot = np.array([enc.eot_token], dtype=np.uint32)
    parts = []
    for text in texts:
        parts.append(eot)  # GPT-2's document delimiter goes first, as in OpenAI's data
        # encode_ordinary(text) is encode(text, disallowed_special=()) (tiktoken's docs): special
        # tokens' text is plain text. encode_to_numpy is that encode returning a numpy array
        # straight from tiktoken's buffer, without making a Python int per token
        parts.append(enc.encode_to_numpy(text, disallowed_special=()))
    return np.concatenate(parts).astype(np.uint16)


def _chunks(documents, chunk_chars):
    """Lists of consecutive documents of about chunk_chars characters (at least one document)."""
    chunk, chars = [], 0
    for text in documents:
        chunk.append(text)
        chars += len(text)
        if chars >= chunk_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def tokenize_stream(documents, num_proc=1, chunk_chars=1 << 20):
    """The tokens of each chunk of documents (tokenize_docs), in document order. At most
    2*num_proc chunks are in flight, so memory stays bounded however large the source is
    (Pool.imap would read the whole source ahead into its task queue)."""
    chunks = _chunks(documents, chunk_chars)
    if num_proc == 1:
        yield from map(tokenize_docs, chunks)
        return
    import multiprocessing as mp

    with mp.Pool(num_proc) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(tokenize_docs, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

# -----------------------------------------------------------------------------
# writing shards

SHARD_SIZE = 100_000_000
STAGING_PREFIX = ".fineweb-tmp-"  # a run's folder inside an existing --out_dir; the loader never reads it
STAGING_LOCK = ".fineweb-lock"  # in a staging folder, locked while its run lives


def check_out_dir(out_dir, overwrite=False):
    """Refuse an out_dir that cannot take a new set of shards, before any work; creates nothing.
    A non-empty out_dir is refused unless overwrite: train_gpt2.py reads every *_train_*.bin in
    the folder, so shards of two runs must never mix."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out_dir {out_dir} is a file, not a folder; choose another --out_dir")
    entries = len(os.listdir(out_dir)) if os.path.isdir(out_dir) else 0
    if entries and not overwrite:
        raise InputError(
            f"--out_dir {out_dir} is not empty ({entries} entr{'y' if entries == 1 else 'ies'}); fineweb.py does not write into "
            f"it so that shards of two runs never mix. Pass --overwrite to replace its shards and manifest once the "
            f"new set is complete (other files stay), or choose another --out_dir"
        )


def _makedirs(path):
    """os.makedirs(path), returning the folders it made, outermost first."""
    missing = []
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        os.mkdir(d)
    return missing[::-1]


def _remove_empty(folders):
    for d in reversed(folders):
        try:
            os.rmdir(d)
        except OSError:
            break


# the environment's refusals while writing: the user can fix them, and they are no bug of ours
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
# what a run of fineweb.py writes into out_dir (or leaves behind if killed) and train_gpt2.py would
# read: shards of any prefix, their temporaries, the manifest, the folders of killed runs
OUR_FILES = [*SHARD_GLOBS, "*_val_*.bin.tmp", "*_train_*.bin.tmp", MANIFEST, MANIFEST + ".tmp", STAGING_PREFIX + "*"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock_staging(folder):
    """A lock held for as long as this run writes into its staging folder: the kernel drops it
    when the process dies, however it dies, which is how the next run tells a killed run's folder
    from a running one's."""
    fd = os.open(os.path.join(folder, STAGING_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def staging_leftovers(out_dir):
    """The staging folders that killed fineweb.py runs into out_dir left behind (a hidden
    .fineweb-tmp-* inside it, or a sibling <out_dir>.tmp-*), as (path, bytes); the folder of a run
    still going (its lock held) is left out."""
    found = []
    candidates = glob.glob(os.path.join(out_dir, STAGING_PREFIX + "*")) + glob.glob(os.path.abspath(out_dir) + ".tmp-*")
    for folder in candidates:
        if not re.search(r"tmp-[a-z0-9_]{8}$", folder) or not os.path.isdir(folder):
            continue  # not a name mkdtemp made
        names = os.listdir(folder)
        if not all(n == STAGING_LOCK or any(fnmatch.fnmatch(n, p) for p in OUR_FILES) for n in names):
            continue  # files no run of ours writes: not ours to delete
        if STAGING_LOCK in names:
            fd = os.open(os.path.join(folder, STAGING_LOCK), os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running fineweb.py's
            finally:
                os.close(fd)
        found.append((folder, sum(os.path.getsize(os.path.join(folder, n)) for n in names)))
    return found


def remove_staging_leftovers(out_dir):
    """Remove what killed runs into out_dir left (staging_leftovers), naming each."""
    for folder, size in staging_leftovers(out_dir):
        shutil.rmtree(folder)
        print(f"removed {folder} ({size / 1e6:,.1f} MB), the unfinished shards of a fineweb.py run into "
              f"{out_dir} that was killed")


@contextlib.contextmanager
def _staged_into(out_dir):
    """A new, empty folder for a run's shards and manifest, which become out_dir's data set once
    the body completes. The folder is on out_dir's file system so that they can be moved into
    place: inside out_dir if it exists (a hidden .fineweb-tmp-* folder, which the loader's
    *_train_*.bin never matches), else a sibling <out_dir>.tmp-* that becomes out_dir by one
    rename, so a new out_dir appears complete or not at all. In an existing out_dir, a marker
    (REPLACING) is written first, then the old set's manifest and shards go (of any prefix; other
    files stay), the new shards move in, their manifest last, and the marker goes: a crash in
    between leaves the marker, which the loader refuses, never a mix that it would read. If the
    body fails, the folder goes, and with it any parent folders made for it: a failed run
    leaves the file system as it found it. The folder is locked while the run lives, so that
    the next run into out_dir removes it if the run was killed (remove_staging_leftovers)."""
    made, lock, swapping = [], None, False
    try:
        if os.path.isdir(out_dir):
            tmp = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
        else:
            parent = os.path.dirname(os.path.abspath(out_dir))
            made = _makedirs(parent)
            tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out_dir)) + ".tmp-", dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would become the data set's mode
    except OSError as e:
        _remove_empty(made)
        raise InputError(f"--out_dir {out_dir}: cannot make a folder there: {os_reason(e)}") from e
    try:
        lock = _lock_staging(tmp)
        yield tmp
        if not os.path.exists(out_dir):
            os.remove(os.path.join(tmp, STAGING_LOCK))
            os.replace(tmp, out_dir)
            return
        # a marker for the time the folder holds neither data set whole: the loader refuses it
        replacing = os.path.join(out_dir, REPLACING)
        write_atomic(replacing, f"fineweb.py (pid {os.getpid()}) is replacing this data set\n".encode())
        swapping = True
        old = {p for pattern in OUR_FILES for p in glob.glob(os.path.join(out_dir, pattern))}
        for path in sorted(old, key=lambda p: (os.path.basename(p) != MANIFEST, p)):
            if os.path.abspath(path) == os.path.abspath(tmp):
                continue
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        for name in sorted(set(os.listdir(tmp)) - {STAGING_LOCK}, key=lambda n: n == MANIFEST):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
        os.remove(replacing)
        os.remove(os.path.join(tmp, STAGING_LOCK))
        os.rmdir(tmp)
    except BaseException as e:
        if not swapping:  # once the old set is going, the marker and the new shards stay for a rerun
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            raise InputError(f"--out_dir {out_dir}: writing the shards failed: {os_reason(e)}; "
                             + ("rerun this command" if swapping else "this run's shards were removed")) from e
        raise
    finally:
        if lock is not None:
            os.close(lock)


class ShardWriter:
    """Fills shards from a stream of token arrays: the first shard (val_tokens) is the validation
    split, the others (shard_size each) train; a document that does not fit continues in the next
    shard. A shard is written only once the next token arrives, so a corpus with no tokens left
    for training is an error before anything is written, and the last shard may be partial."""

    def __init__(self, out_dir, prefix, shard_size, val_tokens):
        self.out_dir, self.prefix = out_dir, prefix
        self.shard_size, self.val_tokens = shard_size, val_tokens
        self.buf = np.empty(max(shard_size, val_tokens), dtype=TOKEN_DTYPE)
        self.index, self.fill = 0, 0
        self.shards = []  # manifest entries of the written shards

    def capacity(self):
        return self.val_tokens if self.index == 0 else self.shard_size

    def add(self, tokens):
        pos = 0
        while pos < len(tokens):
            if self.fill == self.capacity():
                self._flush()
            n = min(self.capacity() - self.fill, len(tokens) - pos)
            self.buf[self.fill : self.fill + n] = tokens[pos : pos + n]
            self.fill += n
            pos += n

    def _flush(self):
        tokens = self.buf[: self.fill]
        split = "val" if self.index == 0 else "train"
        path = os.path.join(self.out_dir, f"{self.prefix}_{split}_{self.index:06d}.bin")
        write_shard(path, tokens)
        self.shards.append(shard_entry(os.path.basename(path), tokens))
        self.index, self.fill = self.index + 1, 0

    def close(self, what):
        if self.index == 0:
            if self.fill == 0:
                raise InputError(f"{what} has no documents; nothing to write")
            raise InputError(
                f"{what} has only {self.fill} tokens, all in the validation split (--val_tokens "
                f"{self.val_tokens}), leaving none for training; lower --val_tokens"
            )
        if self.fill:
            self._flush()


def write_shards(documents, out_dir, prefix, shard_size=SHARD_SIZE, val_tokens=None, num_proc=1,
                 source=None, overwrite=False, progress=True, chunk_chars=1 << 20):
    """Tokenize documents (an iterable of strings) into shards and a manifest.json, and make them
    out_dir's data set once complete; returns the manifest. A non-empty out_dir is refused unless
    overwrite, which replaces its data set (its old shards stay until the new set is complete, and
    stay as they are if this fails; its other files are kept). A failed run leaves nothing behind.
    val_tokens defaults to shard_size (one shard, the build-nanogpt convention). The output is the
    same whatever num_proc. source: a JSON-able description of where the documents came from, for
    the manifest."""
    val_tokens = shard_size if val_tokens is None else val_tokens
    if shard_size < 1 or val_tokens < 1 or num_proc < 1:
        raise ValueError(f"shard_size ({shard_size}), val_tokens ({val_tokens}) and num_proc ({num_proc}) must be >= 1")
    from tqdm import tqdm

    enc = get_tokenizer()  # built here, before the workers fork, so that they inherit it
    if enc.n_vocab > 2**16:
        raise ValueError(f"the tokenizer has {enc.n_vocab} tokens, more than uint16 shards can hold")
    remove_staging_leftovers(out_dir)  # before the check: a killed run's folder is no content
    check_out_dir(out_dir, overwrite)
    with _staged_into(out_dir) as tmp:
        writer = ShardWriter(tmp, prefix, shard_size, val_tokens)
        bar = None
        try:
            for tokens in tokenize_stream(documents, num_proc, chunk_chars):
                if bar is None:  # made on the first tokens, so that a source that fails at once prints only its error
                    # on a terminal only (disable=None), and erased when done (leave=False): an error or the
                    # summary is then the last line, and a log file gets no carriage-return updates
                    bar = tqdm(unit="tok", unit_scale=True, desc=f"tokenizing into {out_dir}",
                               disable=None if progress else True, leave=False)
                writer.add(tokens)
                bar.update(len(tokens))
        finally:
            if bar is not None:
                bar.close()
        writer.close(describe(source))
        tokenizer = {"name": "gpt2 (tiktoken, tokenizer.get_tokenizer)", "n_vocab": enc.n_vocab, "eot_token": enc.eot_token,
                     "document": "[<|endoftext|>] + encode_ordinary(text)"}
        manifest = save_manifest(tmp, writer.shards, source, tokenizer, shard_size, val_tokens)
    return manifest


def describe(source):
    """A source for error messages, in the words of the flags that chose it."""
    kind = (source or {}).get("kind")
    if kind == "embedded":
        return "the embedded corpus (--embedded)"
    if kind == "local":
        return "--input " + first_three(source["files"], sep=" ")
    if kind == "huggingface":
        return f"--dataset {source['dataset']} --config {source['config']}"
    return "the input"


# the embedded corpus (~139k tokens on Python 3.11) keeps about 12% for validation: enough for a
# few evaluation batches of the cpu preset (8*128 + 1 tokens a batch per process)
EMBEDDED_VAL_TOKENS = 16384
EMBEDDED_OUT_DIR = os.path.join("data", "pydoc")
EMBEDDED_PREFIX = "pydoc"


def embedded_source():
    return {"kind": "embedded", "name": EMBEDDED_NAME, "python": sys.version.split()[0]}


def prepare_embedded(out_dir=EMBEDDED_OUT_DIR, shard_size=SHARD_SIZE, val_tokens=EMBEDDED_VAL_TOKENS, num_proc=1,
                     progress=False):
    """Shards of the embedded corpus (CPython's reference docs) in out_dir, named pydoc_*.bin;
    returns the manifest. A new out_dir appears only with a complete set (write_shards), so a
    caller may test for the folder. If out_dir already holds this corpus made with the same
    settings, its manifest is returned and nothing is written; any other non-empty out_dir is
    refused."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        try:
            manifest = read_manifest(out_dir)
        except (OSError, ValueError):
            manifest = None
        if (manifest and manifest.get("source") == embedded_source() and manifest.get("shard_size") == shard_size
                and manifest.get("val_tokens") == val_tokens):
            return manifest
        raise InputError(
            f"{out_dir} is not empty and does not hold the embedded corpus made with shard_size={shard_size}, "
            f"val_tokens={val_tokens}; remove it or remake it with python fineweb.py --embedded --out_dir {out_dir} --overwrite"
        )
    return write_shards(embedded_documents(), out_dir, EMBEDDED_PREFIX, shard_size, val_tokens, num_proc,
                        source=embedded_source(), progress=progress)


# -----------------------------------------------------------------------------
# benchmark: this pipeline against plain tiktoken on the same documents


def benchmark(documents, num_proc, rounds=3, chunk_chars=None):
    """Tokens/s of write_shards (tokenize, delimit, check, shard, write, on num_proc worker
    processes) and of tiktoken's encode_ordinary_batch with num_proc threads, best of rounds,
    alternating the two so that a noisy machine penalizes both alike. Both count the documents'
    tokens only (not the EOTs the pipeline adds), and their tokens are checked to be equal.
    chunk_chars defaults to what gives each worker 8 chunks (at most write_shards' 1 MiB): a real
    run has thousands of chunks, and a benchmark of a few MB in 1 MiB chunks would leave workers
    idle and time that instead."""
    enc = get_tokenizer()
    documents = list(documents)
    if chunk_chars is None:
        chunk_chars = max(1, min(1 << 20, sum(map(len, documents)) // (8 * num_proc)))
    ref = enc.encode_ordinary_batch(documents, num_threads=num_proc)
    num_tokens = sum(map(len, ref))
    expected = np.fromiter(itertools.chain.from_iterable([enc.eot_token] + r for r in ref), dtype=np.int64)
    del ref
    times = {"pipeline": [], "tiktoken": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        enc.encode_ordinary_batch(documents, num_threads=num_proc)
        times["tiktoken"].append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            # a few shards, so that the shard boundaries and writes are part of what is timed
            manifest = write_shards(documents, tmp, "bench", shard_size=max(1, num_tokens // 4),
                                    val_tokens=max(1, num_tokens // 10), num_proc=num_proc, progress=False,
                                    chunk_chars=chunk_chars)
            times["pipeline"].append(time.perf_counter() - t0)
            got = np.concatenate([load_shard(os.path.join(tmp, s["name"])) for s in manifest["shards"]])
            if not np.array_equal(got, expected):
                raise AssertionError("the pipeline's tokens differ from tiktoken's")
    result = {"documents": len(documents), "tokens": num_tokens, "num_proc": num_proc, "rounds": rounds}
    for k, v in times.items():
        result[f"{k}_tok_s"] = num_tokens / min(v)
    result["ratio"] = result["pipeline_tok_s"] / result["tiktoken_tok_s"]
    return result

# -----------------------------------------------------------------------------
# command line


def default_names(dataset, config):
    """build-nanogpt's names for FineWeb-Edu's 10B sample (edu_fineweb10B/, edufineweb_*.bin), and
    the same pattern for the others."""
    m = re.fullmatch(r"sample-(\d+)BT", config)
    size = f"{m[1]}B" if m else "_" + re.sub(r"\W+", "_", config)
    known = {"HuggingFaceFW/fineweb-edu": ("edu_fineweb", "edufineweb"), "HuggingFaceFW/fineweb": ("fineweb", "fineweb")}
    base = re.sub(r"\W+", "_", dataset.split("/")[-1]).lower()
    folder, prefix = known.get(dataset, (base, base))
    return folder + size, prefix


def available_cpus():
    """The CPUs this process may run on: its affinity mask where the OS has one (set by taskset,
    cgroup cpusets, Slurm, Docker's --cpuset-cpus), which os.cpu_count() ignores; else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


OTHER_TOOLS = """\
shards for other tools:
  The format is llm.c's, which modded-nanogpt reads too, so our shards serve both as they are once
  their names and sizes are what those tools expect. Their loaders glob <folder>/<prefix>_train_*.bin
  and <prefix>_val_*.bin, and we write <out_dir>/<prefix>_val_000000.bin, <prefix>_train_000001.bin, ...

  llm.c (train_gpt2.cu -i/-j) reads dev/data/edu_fineweb10B/edu_fineweb_{train,val}_*.bin, and asserts
  that every shard it globs holds at least nproc*B*T+1 tokens (524,289 for its GPT-2 124M run,
  8 GPUs x 64 x 1024), val included:
      python fineweb.py --prefix edu_fineweb --out_dir llm.c/dev/data/edu_fineweb10B
  All shards but the last train shard hold --shard_size (100M) tokens; the last holds the remainder:
  move it out if it is smaller than that.

  modded-nanogpt reads data/fineweb10B/fineweb_{train,val}_*.bin (FineWeb, not -Edu) and evaluates on
  the first 10,485,760 validation tokens, so --val_tokens must be 10485760 or more (the default,
  100M, is); FineWeb's default names here are already fineweb10B/ and fineweb_*:
      python fineweb.py --dataset HuggingFaceFW/fineweb --out_dir modded-nanogpt/data/fineweb10B

  build-nanogpt's names (edu_fineweb10B/, edufineweb_*) are this script's defaults. Shards made by those
  tools have no manifest.json: train_gpt2.py reads them as they are, and --index DIR records them.
"""


def get_parser():
    p = ArgumentParser("fineweb.py", description=__doc__, epilog=OTHER_TOOLS)
    a = p.add_argument
    src = p.add_argument_group("source (default: Hugging Face FineWeb-Edu, sample-10BT, train split)")
    src.add_argument("--dataset", default=None, help=f"Hugging Face dataset (default {DEFAULT_DATASET}; or HuggingFaceFW/fineweb)")
    src.add_argument("--config", default=None, help=f"its configuration (default {DEFAULT_CONFIG}; or sample-100BT, sample-350BT, default)")
    src.add_argument("--streaming", action="store_true", help="read the Hugging Face dataset from the Hub as it goes instead of downloading a local copy first")
    src.add_argument("--input", nargs="+", default=None, metavar="PATH",
                     help=f"local files, folders or globs instead (default: none): {LOCAL_TYPES}; read in the order given, "
                          "a glob's matches and a folder's files sorted")
    src.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                     help="read --input's files in a random order of this seed (default: off, the order above). For a "
                          "corpus of a document per file that path order groups by topic (linux-doc): validation and "
                          "every stretch of training then sample the whole corpus, as FineWeb's shuffled stream does")
    src.add_argument("--embedded", action="store_true",
                     help=f"the embedded offline corpus instead: {EMBEDDED_NAME}; about 139k tokens, no network needed")
    out = p.add_argument_group("output")
    out.add_argument("--out_dir", default=None,
                     help="folder for the shards and manifest.json (default: edu_fineweb10B for FineWeb-Edu sample-10BT, "
                          f"named after --dataset/--config otherwise, {EMBEDDED_OUT_DIR} for --embedded; required with --input)")
    out.add_argument("--prefix", default=None,
                     help="shard name prefix: <prefix>_val_000000.bin, <prefix>_train_000001.bin, ... (default: edufineweb "
                          "(build-nanogpt's), fineweb for FineWeb, pydoc for --embedded, local for --input; edu_fineweb "
                          "for llm.c, see below)")
    out.add_argument("--shard_size", type=int, default=SHARD_SIZE, help="tokens per train shard (the last one holds the rest)")
    out.add_argument("--val_tokens", type=int, default=None,
                     help=f"tokens in the validation split, the first shard (default: --shard_size; {EMBEDDED_VAL_TOKENS} for "
                          "--embedded; modded-nanogpt needs 10485760 or more)")
    out.add_argument("--overwrite", action="store_true",
                     help="if --out_dir (or --index's folder) holds a data set already, replace its shards and manifest once "
                          "the new set is complete (so the disk must hold both until then); a run that fails leaves them "
                          "as they were, and other files are kept. Without it, a run into a non-empty --out_dir is refused "
                          "and changes nothing")
    a("--index", default=None, metavar="DIR",
      help="instead of making shards, write DIR/manifest.json for the shards already in DIR (made by llm.c, "
           "modded-nanogpt or another tool in this format), which train_gpt2.py needs (default: none)")
    a("--num_proc", type=int, default=available_cpus(),
      help="tokenizer worker processes; by default every CPU this process may use (os.sched_getaffinity, which "
           "honours taskset, cpusets and Slurm), since tokenizing is CPU-bound and reading and writing take little. "
           "The output does not depend on it")
    a("--benchmark", action="store_true", help="instead of writing shards, time this pipeline against tiktoken's "
                                               "encode_ordinary_batch on the source's first --benchmark_docs documents")
    a("--benchmark_docs", type=int, default=2000, help="documents to benchmark on; a smaller source is cycled through")
    a("--benchmark_rounds", type=int, default=3, help="timed rounds of each; the best is reported")
    return p


def check_args(args):
    """Validate the flags once and fill in the defaults that depend on the source."""
    if args.index is not None:
        given = [f for f in ("input", "out_dir", "prefix", "val_tokens", "dataset", "config") if getattr(args, f) is not None]
        given += [f for f in ("embedded", "streaming", "benchmark") if getattr(args, f)]
        if given:
            raise InputError(f"--index indexes the shards already in its folder; --{given[0]} does not apply to it")
        return args
    if args.input is not None and args.embedded:
        raise InputError("--input and --embedded are two different sources; give one")
    if args.shuffle is not None and args.input is None:
        raise InputError("--shuffle orders --input's files; give --input, or leave --shuffle out")
    if args.input is not None or args.embedded:
        hub = [f for f in ("dataset", "config") if getattr(args, f) is not None] + (["streaming"] if args.streaming else [])
        if hub:
            raise InputError(f"--{hub[0]} is for Hugging Face datasets; it does not apply to --input or --embedded")
    for flag in ("shard_size", "num_proc", "benchmark_docs", "benchmark_rounds"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.val_tokens is not None and args.val_tokens < 1:
        raise InputError(f"--val_tokens must be >= 1 (the first shard is the validation split), got {args.val_tokens}")
    if args.embedded:
        args.out_dir = args.out_dir or EMBEDDED_OUT_DIR
        args.prefix = args.prefix or EMBEDDED_PREFIX
        args.val_tokens = args.val_tokens or EMBEDDED_VAL_TOKENS
    elif args.input is not None:
        if args.out_dir is None and not args.benchmark:
            raise InputError("--input needs --out_dir, the folder to write the shards to")
        args.prefix = args.prefix or "local"
    else:
        args.dataset = args.dataset or DEFAULT_DATASET
        args.config = args.config or DEFAULT_CONFIG
        folder, prefix = default_names(args.dataset, args.config)
        args.out_dir = args.out_dir or folder
        args.prefix = args.prefix or prefix
    if args.prefix and not re.fullmatch(r"[\w.-]+", args.prefix):
        raise InputError(f"--prefix {args.prefix!r}: use letters, digits, '.', '-' or '_'")
    if args.out_dir is not None and not args.benchmark:
        check_out_dir(args.out_dir, args.overwrite)  # before the source is opened: a download may take hours
    return args


def parse_args(argv=None):
    return check_args(get_parser().parse_args(argv))


def index(data_dir, overwrite=False):
    """--index: a manifest for the shards in data_dir; refuses to replace one unless overwrite."""
    if not os.path.isdir(data_dir):
        raise InputError(f"--index {data_dir} is not a folder; give the folder that holds the shards")
    if os.path.exists(os.path.join(data_dir, MANIFEST)) and not overwrite:
        raise InputError(
            f"--index {data_dir} already has a {MANIFEST} (a fineweb.py run's, which records the source); "
            f"pass --overwrite to replace it with an index of the shards there"
        )
    manifest = write_manifest(data_dir, source={"kind": "indexed", "note": "shards made elsewhere, indexed by fineweb.py --index"})
    n_train = sum(s["split"] == "train" for s in manifest["shards"])
    print(f"{data_dir}/{MANIFEST}: {len(manifest['shards']) - n_train} val and {n_train} train shards, "
          f"{manifest['tokens']:,} tokens, largest token id {max(s['max_token'] or 0 for s in manifest['shards'])}")
    return manifest


def run(args):
    if args.index is not None:
        return index(args.index, args.overwrite)
    if args.embedded:
        source, documents = embedded_source(), embedded_documents()
    elif args.input is not None:
        files = expand_inputs(args.input)
        if args.shuffle is not None:
            random.Random(args.shuffle).shuffle(files)
        source = {"kind": "local", "files": files, **({"shuffle_seed": args.shuffle} if args.shuffle is not None else {})}
        documents = local_documents(files)
    else:
        source = {"kind": "huggingface", "dataset": args.dataset, "config": args.config, "split": "train"}
        documents = hf_documents(args.dataset, args.config, args.streaming)

    if args.benchmark:
        docs = list(itertools.islice(itertools.cycle(documents), args.benchmark_docs))
        if not docs:
            raise InputError(f"{describe(source)} has no documents to benchmark on")
        r = benchmark(docs, args.num_proc, args.benchmark_rounds)
        print(f"{r['documents']} documents, {r['tokens']:,} tokens, {r['num_proc']} processes, best of {r['rounds']}:")
        print(f"  fineweb.py pipeline:                        {r['pipeline_tok_s']:,.0f} tokens/s")
        print(f"  tiktoken encode_ordinary_batch ({r['num_proc']} threads): {r['tiktoken_tok_s']:,.0f} tokens/s")
        print(f"  ratio pipeline/tiktoken: {r['ratio']:.3f}")
        return r

    t0 = time.time()
    manifest = write_shards(documents, args.out_dir, args.prefix, args.shard_size, args.val_tokens, args.num_proc,
                            source=source, overwrite=args.overwrite)
    n_train = sum(s["split"] == "train" for s in manifest["shards"])
    print(f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens in {time.time() - t0:.1f}s: "
          f"1 val shard ({manifest['shards'][0]['tokens']:,} tokens) and {n_train} train shard{'s' if n_train != 1 else ''} in {args.out_dir}")
    return manifest


def main(argv=None):
    """The command line. A user's mistake (a bad flag, an unreadable input, no network for a
    download) ends it with one line, `fineweb.py: error: ...`, and exit status 2; anything else
    is a bug of ours and keeps its traceback."""
    return exit_on_user_error("fineweb.py", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
