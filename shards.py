"""
llm.c's uint16 shard format, its reader and the checks of a data set (a folder of shards and the
manifest.json that lists them), and the manifest: shared by fineweb.py, which writes data sets,
and train_gpt2.py's loader, which reads them. No torch here.
"""

import glob
import hashlib
import json
import os
import re

import numpy as np

from common import UserError, write_atomic
from tokenizer import GPT2_EOT

# the shard format: llm.c's, so our shards also work with llm.c and modded-nanogpt.
# A header of 256 little-endian int32 (magic, version, number of tokens, then zeros)
# followed by the tokens as little-endian uint16. One definition for writer and reader.

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(UserError, ValueError):
    """A shard file or a folder of shards that is not what the loader expects; the message names
    the file or folder and says how to remake it."""


class NoShardsError(ShardError, FileNotFoundError):
    """A --data_dir that does not exist or holds no shards of the split asked for."""


def write_shard(path, tokens):
    """Write tokens (any integer array-like, all < 2**16) as one shard, atomically."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: token ids must be in [0, 65535] to fit uint16, got [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, len(tokens)
    write_atomic(path, lambda f: f.writelines([header.tobytes(), tokens.astype(TOKEN_DTYPE, copy=False).tobytes()]))


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


def _vocab_error(path, max_token, vocab_size, where=""):
    return ShardError(
        f"shard {path} holds token id {max_token}{where}, but the model's vocab_size is {vocab_size} (ids must be "
        f"< {vocab_size}): it was tokenized with a larger vocabulary than the model's. Regenerate it with "
        f"fineweb.py (GPT-2's tokenizer, ids < 50257), or give the model a vocab_size above {max_token}"
    )


def load_shard(path, vocab_size=None):
    """The tokens of a checked shard as a read-only uint16 memmap (nothing is read until used).
    Given vocab_size, every token id is checked to be below it (one pass over the shard, a
    fraction of a second for 100M tokens): an id the embedding table lacks would otherwise fail
    deep inside the model, or not at all on some devices."""
    ntok = read_shard_header(path)
    if ntok == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(ntok,))
    if vocab_size is not None:
        max_token = int(tokens.max())
        if max_token >= vocab_size:
            raise _vocab_error(path, max_token, vocab_size)
    return tokens


# -----------------------------------------------------------------------------
# a data set: one folder holding one set of shards and the manifest.json that lists them. The
# loader reads every *_train_*.bin of its folder, so it must know that they belong together and
# are all there: the manifest, written last, says so.

MANIFEST = "manifest.json"
REPLACING = ".fineweb-replacing"  # in a data set while fineweb.py --overwrite swaps its shards
SHARD_GLOBS = ("*_val_*.bin", "*_train_*.bin")
FORMAT = {"magic": SHARD_MAGIC, "version": SHARD_VERSION, "header": f"{HEADER_INTS} x int32 little-endian",
          "tokens": "uint16 little-endian"}


def shard_names(data_dir):
    """Names of the files in data_dir that the loader reads as shards, of either split."""
    return sorted({os.path.basename(p) for g in SHARD_GLOBS for p in glob.glob(os.path.join(data_dir, g))})


def shard_split(name):
    return "val" if re.match(r".*_val_.*\.bin$", name) else "train"


def read_manifest(data_dir):
    with open(os.path.join(data_dir, MANIFEST)) as f:
        return json.load(f)


def shard_entry(name, tokens):
    """A shard's manifest entry, from its tokens."""
    return {
        "name": name,
        "split": shard_split(name),
        "tokens": int(len(tokens)),
        # the documents that start in this shard: encode_ordinary never yields <|endoftext|>,
        # so every EOT is a document's first token
        "documents": int(np.count_nonzero(tokens == GPT2_EOT)),
        # so that the loader can refuse ids beyond the model's vocabulary without reading the shard
        "max_token": int(tokens.max()) if len(tokens) else None,
    }


def first_three(names, sep=", "):
    """The first three names joined by sep, then '...' if there are more: a list for a one-line error."""
    return sep.join(names[:3] + (["..."] if len(names) > 3 else []))


def _remake(data_dir):
    return f"remake the data set with python fineweb.py ... --out_dir {data_dir} --overwrite"


def _check_one_prefix(folder, names, flag="--data_dir "):
    """The shards' names share one prefix (edufineweb of edufineweb_train_000001.bin)."""
    prefixes = sorted({re.match(r"(.*)_(?:val|train)_", n)[1] for n in names})
    if len(prefixes) > 1:
        raise ShardError(
            f"{flag}{folder} holds shards of {len(prefixes)} data sets (prefixes {', '.join(prefixes)}), and the "
            f"loader would read them all as one: keep one data set per folder (move the others out, or "
            f"{_remake(folder)})"
        )


def check_data_dir(data_dir):
    """The manifest of the data set in data_dir, after checking that the folder holds exactly the
    shards of one finished fineweb.py run: shards of one prefix, a manifest.json, every shard it
    lists present with its header's token count, and no shard it does not list. Shards without
    a manifest (another tool's) are taken whole by their headers: the manifest returned is then
    made from them, with "indexed": False and no max_token (the loader checks each shard's ids
    when it opens it). Reads the shards' headers only. Raises ShardError otherwise."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ShardError(f"--data_dir {data_dir} is a file, not a folder; give the folder of token shards that "
                         f"fineweb.py wrote")
    if not os.path.isdir(data_dir):
        raise NoShardsError(
            f"--data_dir {data_dir} does not exist; make shards with fineweb.py (python fineweb.py --out_dir {data_dir})"
        )
    names = shard_names(data_dir)
    _check_one_prefix(data_dir, names)
    path = os.path.join(data_dir, MANIFEST)
    remake = _remake(data_dir)
    if os.path.exists(os.path.join(data_dir, REPLACING)):
        raise ShardError(
            f"--data_dir {data_dir} is half replaced: a fineweb.py --overwrite into it stopped between removing the "
            f"old shards and writing the new ones' {MANIFEST}; rerun that fineweb.py command"
        )
    if not os.path.isfile(path):
        if not names:
            raise NoShardsError(f"--data_dir {data_dir} holds no shards (*_val_*.bin, *_train_*.bin); make them with fineweb.py")
        # shards of another tool in the same format (llm.c, modded-nanogpt): a header whose token
        # count matches the file size proves a shard whole, and fineweb.py never leaves shards
        # without a manifest (it writes a new data set elsewhere and moves it in complete)
        shards = [{"name": n, "split": shard_split(n), "tokens": read_shard_header(os.path.join(data_dir, n))} for n in names]
        return {"source": None, "indexed": False, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    try:
        manifest = read_manifest(data_dir)
        listed = {s["name"]: int(s["tokens"]) for s in manifest["shards"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{path} is not a manifest that fineweb.py wrote ({type(e).__name__}: {e}); {remake}") from e
    unlisted = sorted(set(names) - set(listed))
    if unlisted:
        raise ShardError(
            f"--data_dir {data_dir} holds {len(unlisted)} shard(s) that its {MANIFEST} does not list "
            f"({first_three(unlisted)}): shards of another run are mixed in. Move them out, or {remake}"
        )
    missing = sorted(set(listed) - set(names))
    if missing:
        raise ShardError(
            f"--data_dir {data_dir} has {len(listed) - len(missing)} of the {len(listed)} shards its {MANIFEST} lists "
            f"(missing {first_three(missing)}): the data set is incomplete, a copy that did not finish or shards "
            f"deleted since. Copy it again, or {remake}"
        )
    for name, ntok in listed.items():
        shard = os.path.join(data_dir, name)
        found = read_shard_header(shard)
        if found != ntok:
            raise ShardError(
                f"shard {shard} has {found} tokens but {path} lists {ntok}: it was replaced after fineweb.py wrote "
                f"the data set; {remake}, or reindex shards from another tool with python fineweb.py --index "
                f"{data_dir} --overwrite"
            )
    return manifest


def find_shards(data_dir, split, vocab_size=None):
    """Sorted paths of one split's shards ('train' or 'val') in data_dir, as fineweb.py names them,
    after checking the whole data set (check_data_dir) and, given vocab_size, its token ids
    (check_vocab). Raises NoShardsError (a ShardError and a FileNotFoundError) for a missing
    folder or split, ShardError for the rest."""
    if vocab_size is None:
        check_data_dir(data_dir)
    else:
        check_vocab(data_dir, vocab_size, split)
    shards = sorted(glob.glob(os.path.join(data_dir, f"*_{split}_*.bin")))
    if not shards:
        raise NoShardsError(
            f"--data_dir {data_dir} has no {split} shards (*_{split}_*.bin); make them with fineweb.py "
            f"(python fineweb.py --out_dir {data_dir})"
        )
    return shards


def check_vocab(data_dir, vocab_size, split=None):
    """The largest token id in data_dir's shards (of one split, or all), after checking that each
    is below vocab_size: from the manifest's max_token, recorded when the shard was written, so
    this costs no read of the shards; a shard whose entry lacks max_token (a manifest of an older
    fineweb.py) is read through, and shards without a manifest are left to the loader, which checks
    each when it opens it. Checks the data set first (check_data_dir)."""
    manifest = check_data_dir(data_dir)
    largest = -1
    for entry in manifest["shards"]:
        if split is not None and shard_split(entry["name"]) != split:
            continue
        path = os.path.join(data_dir, entry["name"])
        if "max_token" in entry:
            max_token = -1 if entry["max_token"] is None else int(entry["max_token"])
            where = f" (its max_token in {MANIFEST})"
        elif manifest.get("indexed") is False:
            continue  # no manifest: a whole pass over every shard at start-up would be slow (20 GB for
            # FineWeb-Edu 10B); the loader checks each shard's ids when it opens it (load_shard)
        else:
            tokens = load_shard(path)
            max_token, where = int(tokens.max()) if len(tokens) else -1, ""
        if max_token >= vocab_size:
            raise _vocab_error(path, max_token, vocab_size, where)
        largest = max(largest, max_token)
    return largest


def data_fingerprint(data_dir, sample_bytes=1 << 16):
    """The data set in data_dir identified by its content, not its path, for --resume: a digest of
    each shard's split, token count and first and last sample_bytes, in the loader's order. A copy
    or a move keeps it; a regenerated or different data set changes it. Reads 2 * sample_bytes a
    shard (a few MB for FineWeb-Edu's 100 shards)."""
    digest = hashlib.sha256()
    for name in sorted(shard_names(data_dir), key=lambda n: (shard_split(n), n)):
        path = os.path.join(data_dir, name)
        ntok = read_shard_header(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES + sample_bytes)[HEADER_BYTES:]
            f.seek(max(HEADER_BYTES, os.path.getsize(path) - sample_bytes))
            tail = f.read()
        digest.update(f"{shard_split(name)} {ntok}\n".encode() + head + tail)
    return digest.hexdigest()


def write_manifest(out_dir, source=None):
    """Index the shards already in out_dir (of one prefix; made by write_shard, or by another tool
    in the same format such as llm.c) into out_dir/manifest.json, written atomically; returns
    the manifest. Reads every shard once, for its token count, documents (GPT-2 <|endoftext|>
    tokens) and largest token id. source: a JSON-able note of where the shards came from."""
    if not os.path.isdir(out_dir):
        raise NoShardsError(f"{out_dir} is not a folder; give the folder that holds the shards")
    names = shard_names(out_dir)
    if not names:
        raise NoShardsError(f"{out_dir} holds no shards (*_val_*.bin, *_train_*.bin) to index")
    _check_one_prefix(out_dir, names, flag="")
    names.sort(key=lambda n: (shard_split(n) != "val", n))  # val first, as fineweb.py writes them
    shards = [shard_entry(n, load_shard(os.path.join(out_dir, n))) for n in names]
    shard_size = max((s["tokens"] for s in shards if s["split"] == "train"), default=0)
    val_tokens = sum(s["tokens"] for s in shards if s["split"] == "val")
    return save_manifest(out_dir, shards, source, None, shard_size, val_tokens)


def save_manifest(folder, shards, source, tokenizer, shard_size, val_tokens):
    """folder/manifest.json listing shards (their manifest entries), written atomically; returns it."""
    manifest = {
        "source": source,
        "tokenizer": tokenizer,
        "format": FORMAT,
        "shard_size": shard_size,
        "val_tokens": val_tokens,
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "shards": shards,
    }
    write_atomic(os.path.join(folder, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
