"""
Text into GPT-2 token shards for train_gpt2.py: FineWeb-Edu from Hugging Face, local files, or
an embedded offline corpus (CPython's own reference documentation).

FineWeb-Edu's 10B-token sample (needs a network; about 100 shards of 100M tokens):

    python fineweb.py                                   # -> edu_fineweb10B/
    python fineweb.py --config sample-100BT             # -> edu_fineweb100B/
    python fineweb.py --dataset HuggingFaceFW/fineweb   # -> fineweb10B/
    python fineweb.py --streaming                       # read from the Hub as it goes, no local copy

Local files (.jsonl/.json with a "text" field, .parquet with a "text" column, .txt one document per file):

    python fineweb.py --input "corpus/*.jsonl" more.parquet --out_dir data/mine --val_tokens 1000000

The embedded offline corpus, CPython's bundled reference documentation (pydoc_data.topics, one
document per topic, about 139k tokens on Python 3.11); no network, a few seconds:

    python fineweb.py --embedded                        # -> data/pydoc/

Tokenizer throughput of this pipeline against plain tiktoken on the same documents and workers:

    python fineweb.py --embedded --benchmark

Every document becomes [<|endoftext|>] + encode_ordinary(text) with GPT-2's tokenizer. The first
shard (--val_tokens tokens) is the validation split, the rest train, in shards of --shard_size
tokens named <prefix>_val_000000.bin, <prefix>_train_000001.bin, ...; documents flow across shard
boundaries. A manifest.json is written last. The format is llm.c's (see below).
"""

import argparse
import collections
import glob
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

# -----------------------------------------------------------------------------
# the shard format: llm.c's, so our shards also work with llm.c and modded-nanogpt.
# A header of 256 little-endian int32 (magic, version, number of tokens, then zeros)
# followed by the tokens as little-endian uint16. One definition for writer and reader.

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(ValueError):
    """A shard file that is not what the loader expects."""


def write_shard(path, tokens):
    """Write tokens (any integer array-like, all < 2**16) as one shard, atomically: the data goes
    to a temporary name that is renamed only once complete, so an interrupted write never leaves
    a truncated file that looks valid."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: token ids must be in [0, 65535] to fit uint16, got [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, len(tokens)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard_header(path):
    """Number of tokens in the shard at path, after checking its header against the file size."""
    regen = "regenerate it with fineweb.py"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e}") from e
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"shard {path} is {size} bytes, shorter than the {HEADER_BYTES}-byte header; {regen}")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != SHARD_MAGIC:
        raise ShardError(f"shard {path} has magic {header[0]}, expected {SHARD_MAGIC}: not a GPT-2 token shard; {regen}")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"shard {path} has version {header[1]}, expected {SHARD_VERSION}; {regen}")
    ntok = int(header[2])
    expected = HEADER_BYTES + 2 * ntok
    if size != expected:
        raise ShardError(
            f"shard {path} is {size} bytes but its header says {ntok} tokens ({expected} bytes): "
            f"truncated or corrupted; {regen}"
        )
    return ntok


def load_shard(path):
    """The tokens of a checked shard as a read-only uint16 memmap (nothing is read until used)."""
    ntok = read_shard_header(path)
    if ntok == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(ntok,))


# -----------------------------------------------------------------------------
# sources: each is an iterator of document strings, in a fixed order

DEFAULT_DATASET = "HuggingFaceFW/fineweb-edu"
DEFAULT_CONFIG = "sample-10BT"
EMBEDDED_NAME = "CPython's bundled reference documentation (pydoc_data.topics), one document per topic"
# local file types and the `datasets` packaged loader that reads each
LOCAL_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
LOCAL_TYPES = ".jsonl/.json (a 'text' field), .parquet (a 'text' column) or .txt (one document per file)"


class InputError(ValueError):
    """Input that fineweb.py cannot make shards from; the message says which flag or file, and why."""


def embedded_documents():
    """CPython's reference documentation as shipped with every CPython (the text behind help('if')):
    one document per topic, in sorted topic order. Its size depends on the Python version."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise RuntimeError(
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


def expand_inputs(patterns):
    """The files named by --input: each pattern a path or a glob (matches sorted), in the order given."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"--input {pattern} matches no file")
        elif not os.path.isfile(pattern):
            raise FileNotFoundError(f"--input {pattern}: no such file")
        else:
            matches = [pattern]
        for path in matches:
            ext = os.path.splitext(path)[1].lower()
            if ext not in LOCAL_LOADERS:
                raise InputError(f"--input {path}: cannot read '{ext}' files; expected {LOCAL_TYPES}")
        files.extend(matches)
    return files


def local_documents(files):
    """Documents of local files, in file order, through `datasets`' packaged loaders in streaming
    mode: one pass, nothing converted to an Arrow cache, memory bounded whatever the file size."""
    import datasets

    datasets.disable_progress_bars()
    loader_of = lambda path: LOCAL_LOADERS[os.path.splitext(path)[1].lower()]
    for loader, group in itertools.groupby(files, key=loader_of):
        group = list(group)
        if loader == "text":
            # a run of .txt files loads in one call (a folder may hold thousands of them); every file
            # is one document, even an empty one
            ds = datasets.load_dataset("text", data_files=group, split="train", streaming=True, sample_by="document")
            what = "--input .txt files " + ", ".join(group[:3]) + (", ..." if len(group) > 3 else "")
            yield from _text_batches(ds, what)
            continue
        for path in group:
            if os.path.getsize(path) == 0:
                continue  # holds no records (the json loader fails on it with a bare StopIteration)
            ds = datasets.load_dataset(loader, data_files=[path], split="train", streaming=True)
            yield from _text_batches(ds, f"--input {path}")


def hf_documents(dataset=DEFAULT_DATASET, config=DEFAULT_CONFIG, streaming=False):
    """Documents of a Hugging Face dataset's train split. Without streaming, `datasets` first
    downloads it and converts it to a memory-mapped Arrow cache; with streaming, it is read from
    the Hub as we go."""
    import datasets

    ds = datasets.load_dataset(dataset, name=config, split="train", streaming=streaming)
    yield from _text_batches(ds, f"--dataset {dataset} --config {config}")


# -----------------------------------------------------------------------------
# tokenization: chunks of documents to worker processes, results back in document order


def tokenize_docs(texts):
    """[EOT] + encode_ordinary(text) for each text, concatenated, as uint16. Runs in the workers."""
    from model import get_tokenizer

    enc = get_tokenizer()
    eot = np.array([enc.eot_token], dtype=np.uint32)
    parts = []
    for text in texts:
        parts.append(eot)  # GPT-2's document delimiter goes first, as in OpenAI's data
        # encode_ordinary(text) is encode(text, disallowed_special=()) (tiktoken's docs): special
        # tokens' text is plain text. encode_to_numpy is that encode returning a numpy array
        # straight from tiktoken's buffer, without making a Python int per token
        parts.append(enc.encode_to_numpy(text, disallowed_special=()))
    tokens = np.concatenate(parts)
    if tokens.max() >= 2**16:
        raise ValueError(f"token id {tokens.max()} does not fit in uint16; the shard format holds ids < 65536")
    return tokens.astype(np.uint16)


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
    """(tokens, number of documents) per chunk of documents, in document order. At most
    2*num_proc chunks are in flight, so memory stays bounded however large the source is
    (Pool.imap would read the whole source ahead into its task queue)."""
    chunks = _chunks(documents, chunk_chars)
    if num_proc == 1:
        for chunk in chunks:
            yield tokenize_docs(chunk), len(chunk)
        return
    import multiprocessing as mp

    with mp.Pool(num_proc) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append((pool.apply_async(tokenize_docs, (chunk,)), len(chunk)))
            if len(pending) >= 2 * num_proc:
                result, n = pending.popleft()
                yield result.get(), n
        while pending:
            result, n = pending.popleft()
            yield result.get(), n


# -----------------------------------------------------------------------------
# writing shards

SHARD_SIZE = 100_000_000
MANIFEST = "manifest.json"


def shard_path(out_dir, prefix, index):
    split = "val" if index == 0 else "train"
    return os.path.join(out_dir, f"{prefix}_{split}_{index:06d}.bin")


def _our_files(out_dir):
    """Files in out_dir that a run of fineweb.py writes (or leaves behind if killed), and that
    train_gpt2.py would read: shards of any prefix, their temporaries, the manifest."""
    names = ["*_val_*.bin", "*_train_*.bin", "*_val_*.bin.tmp", "*_train_*.bin.tmp", MANIFEST, MANIFEST + ".tmp"]
    return sorted(set(itertools.chain.from_iterable(glob.glob(os.path.join(out_dir, n)) for n in names)))


def prepare_out_dir(out_dir, overwrite=False):
    """Make out_dir ready for a new set of shards. A non-empty out_dir is refused unless overwrite,
    which deletes the shards and manifest in it first (train_gpt2.py reads every *_train_*.bin in
    the folder, so shards of two runs must never mix); other files are left alone."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(
                f"--out_dir {out_dir} is not empty ({len(os.listdir(out_dir))} entries); fineweb.py does not "
                f"write into it so that shards of two runs never mix. Pass --overwrite to delete its shards "
                f"and manifest first, or choose another --out_dir"
            )
        for path in _our_files(out_dir):
            os.remove(path)
    os.makedirs(out_dir, exist_ok=True)


class ShardWriter:
    """Fills shards from a stream of token arrays: the first shard (val_tokens) is the validation
    split, the others (shard_size each) train; a document that does not fit continues in the next
    shard. A shard is written only once the next token arrives, so a corpus with no tokens left
    for training is an error before anything is written, and the last shard may be partial."""

    def __init__(self, out_dir, prefix, shard_size, val_tokens, eot_token):
        self.out_dir, self.prefix = out_dir, prefix
        self.shard_size, self.val_tokens, self.eot_token = shard_size, val_tokens, eot_token
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
        path = shard_path(self.out_dir, self.prefix, self.index)
        write_shard(path, tokens)
        self.shards.append({
            "name": os.path.basename(path),
            "split": "val" if self.index == 0 else "train",
            "tokens": int(self.fill),
            # the documents that start in this shard: encode_ordinary never yields <|endoftext|>,
            # so every EOT is a document's first token
            "documents": int(np.count_nonzero(tokens == self.eot_token)),
        })
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
    """Tokenize documents (an iterable of strings) into shards in out_dir and write manifest.json
    last; returns the manifest. val_tokens defaults to shard_size (one shard, the build-nanogpt
    convention). The output is the same whatever num_proc. source: a JSON-able description of
    where the documents came from, for the manifest."""
    val_tokens = shard_size if val_tokens is None else val_tokens
    if shard_size < 1 or val_tokens < 1 or num_proc < 1:
        raise ValueError(f"shard_size ({shard_size}), val_tokens ({val_tokens}) and num_proc ({num_proc}) must be >= 1")
    from model import get_tokenizer
    from tqdm import tqdm

    enc = get_tokenizer()  # built here, before the workers fork, so that they inherit it
    if enc.n_vocab > 2**16:
        raise ValueError(f"the tokenizer has {enc.n_vocab} tokens, more than uint16 shards can hold")
    prepare_out_dir(out_dir, overwrite)
    what = describe(source)
    writer = ShardWriter(out_dir, prefix, shard_size, val_tokens, enc.eot_token)
    num_docs = 0
    with tqdm(unit="tok", unit_scale=True, desc=f"tokenizing into {out_dir}", disable=not progress) as bar:
        for tokens, n in tokenize_stream(documents, num_proc, chunk_chars):
            writer.add(tokens)
            num_docs += n
            bar.update(len(tokens))
        writer.close(what)
    manifest = {
        "source": source,
        "tokenizer": {
            "name": "gpt2 (tiktoken, model.get_tokenizer)",
            "n_vocab": enc.n_vocab,
            "eot_token": enc.eot_token,
            "document": "[<|endoftext|>] + encode_ordinary(text)",
        },
        "format": {"magic": SHARD_MAGIC, "version": SHARD_VERSION, "header": f"{HEADER_INTS} x int32 little-endian",
                   "tokens": "uint16 little-endian"},
        "shard_size": shard_size,
        "val_tokens": val_tokens,
        "documents": num_docs,
        "tokens": sum(s["tokens"] for s in writer.shards),
        "shards": writer.shards,
    }
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
    return manifest


def describe(source):
    """A source for error messages, in the words of the flags that chose it."""
    kind = (source or {}).get("kind")
    if kind == "embedded":
        return "the embedded corpus (--embedded)"
    if kind == "local":
        files = source["files"]
        return "--input " + " ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    if kind == "huggingface":
        return f"--dataset {source['dataset']} --config {source['config']}"
    return "the input"


def read_manifest(out_dir):
    with open(os.path.join(out_dir, MANIFEST)) as f:
        return json.load(f)


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
    returns the manifest. They are written in a temporary sibling folder that is renamed to
    out_dir when complete, so out_dir exists only with a complete set and a caller may test for
    the folder. If out_dir already holds this corpus made with the same settings, its manifest is
    returned and nothing is written; any other non-empty out_dir is refused."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        try:
            manifest = read_manifest(out_dir)
        except (OSError, ValueError):
            manifest = None
        if (manifest and manifest.get("source") == embedded_source() and manifest.get("shard_size") == shard_size
                and manifest.get("val_tokens") == val_tokens):
            return manifest
        raise FileExistsError(
            f"{out_dir} is not empty and does not hold the embedded corpus made with shard_size={shard_size}, "
            f"val_tokens={val_tokens}; remove it or remake it with python fineweb.py --embedded --out_dir {out_dir} --overwrite"
        )
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out_dir)) + ".tmp-", dir=parent)
    try:
        manifest = write_shards(embedded_documents(), tmp, EMBEDDED_PREFIX, shard_size, val_tokens, num_proc,
                                source=embedded_source(), progress=progress)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); os.replace cannot replace a folder everywhere
        os.replace(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return manifest


# -----------------------------------------------------------------------------
# benchmark: this pipeline against plain tiktoken on the same documents


def benchmark(documents, num_proc, rounds=3, chunk_chars=1 << 20):
    """Tokens/s of write_shards (tokenize, delimit, check, shard, write, on num_proc worker
    processes) and of tiktoken's encode_ordinary_batch with num_proc threads, best of rounds,
    alternating the two so that a noisy machine penalizes both alike. Both count the documents'
    tokens only (not the EOTs the pipeline adds), and their tokens are checked to be equal."""
    from model import get_tokenizer

    enc = get_tokenizer()
    documents = list(documents)
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


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    src = p.add_argument_group("source (default: Hugging Face FineWeb-Edu, sample-10BT, train split)")
    src.add_argument("--dataset", default=None, help=f"Hugging Face dataset (default {DEFAULT_DATASET}; or HuggingFaceFW/fineweb)")
    src.add_argument("--config", default=None, help=f"its configuration (default {DEFAULT_CONFIG}; or sample-100BT, sample-350BT, default)")
    src.add_argument("--streaming", action="store_true", help="read the Hugging Face dataset from the Hub as it goes instead of downloading a local copy first")
    src.add_argument("--input", nargs="+", default=None, metavar="PATH",
                     help=f"local files or globs instead: {LOCAL_TYPES}; read in the order given, glob matches sorted")
    src.add_argument("--embedded", action="store_true",
                     help=f"the embedded offline corpus instead: {EMBEDDED_NAME}; about 139k tokens, no network needed")
    out = p.add_argument_group("output")
    out.add_argument("--out_dir", default=None,
                     help="folder for the shards and manifest.json (default: edu_fineweb10B for FineWeb-Edu sample-10BT, "
                          f"named after --dataset/--config otherwise, {EMBEDDED_OUT_DIR} for --embedded; required with --input)")
    out.add_argument("--prefix", default=None, help="shard name prefix (default: edufineweb, fineweb, pydoc for --embedded, local for --input)")
    out.add_argument("--shard_size", type=int, default=SHARD_SIZE, help="tokens per train shard")
    out.add_argument("--val_tokens", type=int, default=None,
                     help=f"tokens in the validation split, the first shard (default: --shard_size; {EMBEDDED_VAL_TOKENS} for --embedded)")
    out.add_argument("--overwrite", action="store_true",
                     help="if --out_dir is not empty, delete the shards and manifest in it first. Without it, a re-run into a "
                          "non-empty --out_dir is refused and changes nothing (a killed run leaves only complete shards, "
                          "no manifest.json)")
    a("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="tokenizer worker processes (the output does not depend on it)")
    a("--benchmark", action="store_true", help="instead of writing shards, time this pipeline against tiktoken's "
                                               "encode_ordinary_batch on the source's first --benchmark_docs documents")
    a("--benchmark_docs", type=int, default=2000, help="documents to benchmark on; a smaller source is cycled through")
    a("--benchmark_rounds", type=int, default=3, help="timed rounds of each; the best is reported")
    return p


def check_args(p, args):
    """Validate the flags once and fill in the defaults that depend on the source."""
    if args.input is not None and args.embedded:
        p.error("--input and --embedded are two different sources; give one")
    if args.input is not None or args.embedded:
        hub = [f for f in ("dataset", "config") if getattr(args, f) is not None] + (["streaming"] if args.streaming else [])
        if hub:
            p.error(f"--{hub[0]} is for Hugging Face datasets; it does not apply to --input or --embedded")
    for flag in ("shard_size", "num_proc", "benchmark_docs", "benchmark_rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.val_tokens is not None and args.val_tokens < 1:
        p.error(f"--val_tokens must be >= 1 (the first shard is the validation split), got {args.val_tokens}")
    if args.embedded:
        args.out_dir = args.out_dir or EMBEDDED_OUT_DIR
        args.prefix = args.prefix or EMBEDDED_PREFIX
        args.val_tokens = args.val_tokens or EMBEDDED_VAL_TOKENS
    elif args.input is not None:
        if args.out_dir is None and not args.benchmark:
            p.error("--input needs --out_dir, the folder to write the shards to")
        args.prefix = args.prefix or "local"
    else:
        args.dataset = args.dataset or DEFAULT_DATASET
        args.config = args.config or DEFAULT_CONFIG
        folder, prefix = default_names(args.dataset, args.config)
        args.out_dir = args.out_dir or folder
        args.prefix = args.prefix or prefix
    if args.prefix and not re.fullmatch(r"[\w.-]+", args.prefix):
        p.error(f"--prefix {args.prefix!r}: use letters, digits, '.', '-' or '_'")
    return args


def main(argv=None):
    p = get_parser()
    args = check_args(p, p.parse_args(argv))
    if args.embedded:
        source, documents = embedded_source(), embedded_documents()
    elif args.input is not None:
        files = expand_inputs(args.input)
        source, documents = {"kind": "local", "files": files}, local_documents(files)
    else:
        source = {"kind": "huggingface", "dataset": args.dataset, "config": args.config, "split": "train"}
        documents = hf_documents(args.dataset, args.config, args.streaming)

    if args.benchmark:
        docs = list(itertools.islice(itertools.cycle(documents), args.benchmark_docs))
        r = benchmark(docs, args.num_proc, args.benchmark_rounds)
        print(f"{r['documents']} documents, {r['tokens']:,} tokens, {r['num_proc']} processes, best of {r['rounds']}:")
        print(f"  fineweb.py pipeline:                        {r['pipeline_tok_s']:,.0f} tokens/s")
        print(f"  tiktoken encode_ordinary_batch ({r['num_proc']} threads): {r['tiktoken_tok_s']:,.0f} tokens/s")
        print(f"  ratio pipeline/tiktoken: {r['ratio']:.3f}")
        return r

    if args.val_tokens is None:
        args.val_tokens = args.shard_size
    t0 = time.time()
    manifest = write_shards(documents, args.out_dir, args.prefix, args.shard_size, args.val_tokens, args.num_proc,
                            source=source, overwrite=args.overwrite)
    n_train = sum(s["split"] == "train" for s in manifest["shards"])
    print(f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens in {time.time() - t0:.1f}s: "
          f"1 val shard ({manifest['shards'][0]['tokens']:,} tokens) and {n_train} train shard{'s' if n_train != 1 else ''} in {args.out_dir}")
    return manifest


if __name__ == "__main__":
    try:
        main()
    except (InputError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"fineweb.py: error: {e}")
