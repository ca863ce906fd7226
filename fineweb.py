"""
FineWeb-Edu (or local text) into GPT-2 token shards for train_gpt2.py.

(shard format section only; the tokenization pipeline is being written)
"""

import os

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
