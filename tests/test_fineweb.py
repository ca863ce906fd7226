"""fineweb.py: shards hold [EOT] + encode_ordinary(doc) for every document in order, in llm.c's
format; val first; the same output for 1 and 2 processes; .jsonl/.json/.parquet/.txt inputs agree;
clear input errors; safe re-runs; the embedded corpus; the command line; the benchmark."""

import glob
import json
import os
import struct

import numpy as np
import pytest

import fineweb
from fineweb import InputError, write_shards
from model import get_tokenizer

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SHAKESPEARE = os.path.join(DATA, "tinyshakespeare.txt")
EOT = 50256


def reference(docs):
    """The expected token stream, from tiktoken's encode_ordinary one document at a time."""
    enc = get_tokenizer()
    out = []
    for d in docs:
        out.append(EOT)
        out.extend(enc.encode_ordinary(d))
    return out


def read_raw(path):
    """A shard read with struct alone, independently of fineweb's reader: (header ints, tokens)."""
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack("<256i", data[:1024])
    tokens = list(struct.unpack(f"<{(len(data) - 1024) // 2}H", data[1024:]))
    return header, tokens


def all_tokens(out_dir, manifest):
    return [t for s in manifest["shards"] for t in read_raw(os.path.join(out_dir, s["name"]))[1]]


@pytest.fixture(scope="module")
def shakespeare_docs():
    """The first ~100k characters of tiny shakespeare, cut into 40 documents of 12 speeches."""
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip(f"{SHAKESPEARE} is absent (test data from ../shared/data, see its README)")
    with open(SHAKESPEARE, encoding="utf-8") as f:
        speeches = f.read(100_000).split("\n\n")
    docs = ["\n\n".join(speeches[i : i + 12]) for i in range(0, len(speeches), 12)]
    assert len(docs) >= 30
    return docs


# documents no tiktoken shortcut would get right by accident: empty, whitespace only, special
# tokens' text (plain text for encode_ordinary), non-ASCII, and one long enough to span shards
EDGE_DOCS = [
    "Hello world",
    "",
    "<|endoftext|> is only text here, and so is <|fim_prefix|>",
    "naïve café — 中文 😀 ﬁ\u200b",
    " \n\t  \n",
    "First line\nsecond line\n\nthird paragraph. " * 60,
    "last",
]


def test_shards_hold_every_document_in_order(shakespeare_docs, tmp_path):
    ref = reference(shakespeare_docs)
    out = str(tmp_path / "out")
    m = write_shards(shakespeare_docs, out, "shk", shard_size=3000, val_tokens=2000, progress=False, chunk_chars=2000)
    names = [s["name"] for s in m["shards"]]
    n_train = (len(ref) - 2000 + 2999) // 3000
    assert names == ["shk_val_000000.bin"] + [f"shk_train_{i:06d}.bin" for i in range(1, n_train + 1)]
    assert sorted(os.listdir(out)) == sorted(names + ["manifest.json"])  # no temporaries left
    sizes = [s["tokens"] for s in m["shards"]]
    assert sizes == [2000] + [3000] * (n_train - 1) + [len(ref) - 2000 - 3000 * (n_train - 1)]
    assert all_tokens(out, m) == ref  # documents in order, across shard boundaries, none lost
    assert m["tokens"] == len(ref) and m["documents"] == len(shakespeare_docs)
    # per shard, the documents that start in it, from the reference's document offsets
    starts = np.cumsum([0] + [len(reference([d])) for d in shakespeare_docs[:-1]])
    bounds = np.cumsum([0] + sizes)
    assert [s["documents"] for s in m["shards"]] == [int(((starts >= a) & (starts < b)).sum()) for a, b in zip(bounds, bounds[1:])]
    assert [s["split"] for s in m["shards"]] == ["val"] + ["train"] * n_train
    assert json.load(open(os.path.join(out, "manifest.json"))) == m


def test_shard_header_is_llmc_format(tmp_path):
    m = write_shards(EDGE_DOCS, str(tmp_path), "e", shard_size=100, val_tokens=50, progress=False)
    ref = reference(EDGE_DOCS)
    pos = 0
    for s in m["shards"]:
        header, tokens = read_raw(os.path.join(str(tmp_path), s["name"]))
        assert header[:3] == (20240520, 1, s["tokens"]) and not any(header[3:])
        assert tokens == ref[pos : pos + s["tokens"]]
        pos += s["tokens"]
    assert pos == len(ref)
    # one definition of the header: fineweb's reader agrees with struct
    assert len(fineweb.load_shard(os.path.join(str(tmp_path), m["shards"][1]["name"]))) == 100


def test_edge_documents(tmp_path):
    m = write_shards(EDGE_DOCS, str(tmp_path), "e", shard_size=97, val_tokens=40, progress=False, chunk_chars=10)
    got = all_tokens(str(tmp_path), m)
    assert got == reference(EDGE_DOCS)
    # the special tokens' text was encoded as text: the only EOTs are the delimiters
    assert got.count(EOT) == len(EDGE_DOCS) == m["documents"]
    assert len(m["shards"]) > 4  # the long document spans several shards


def test_output_identical_for_1_and_2_processes(shakespeare_docs, tmp_path):
    outs = []
    for num_proc in (1, 2):
        out = str(tmp_path / f"p{num_proc}")
        # small chunks: many of them in flight, so that out-of-order results would show
        write_shards(shakespeare_docs, out, "shk", shard_size=4000, val_tokens=1500, num_proc=num_proc,
                     progress=False, chunk_chars=1500)
        outs.append({name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))})
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) > 5
    for name in outs[0]:
        assert outs[0][name] == outs[1][name], name
    m = json.loads(outs[1]["manifest.json"])
    assert all_tokens(str(tmp_path / "p2"), m) == reference(shakespeare_docs)


def write_inputs(docs, d):
    """The same documents as .jsonl, .json (a list of records), .parquet and one .txt per document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(d)
    with open(os.path.join(d, "docs.jsonl"), "w", encoding="utf-8") as f:
        for i, t in enumerate(docs):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    with open(os.path.join(d, "docs.json"), "w", encoding="utf-8") as f:
        json.dump([{"text": t, "url": f"u{i}"} for i, t in enumerate(docs)], f)
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), os.path.join(d, "docs.parquet"), row_group_size=3)
    os.makedirs(os.path.join(d, "txt"))
    for i, t in enumerate(docs):
        with open(os.path.join(d, "txt", f"doc_{i:04d}.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(t)


def test_local_formats_give_same_tokens(tmp_path):
    d = str(tmp_path / "in")
    write_inputs(EDGE_DOCS, d)
    ref = reference(EDGE_DOCS)
    inputs = {
        "jsonl": [os.path.join(d, "docs.jsonl")],
        "json": [os.path.join(d, "docs.json")],
        "parquet": [os.path.join(d, "docs.parquet")],
        "txt": [os.path.join(d, "txt", "*.txt")],
    }
    for kind, patterns in inputs.items():
        files = fineweb.expand_inputs(patterns)
        assert list(fineweb.local_documents(files)) == EDGE_DOCS, kind
        out = str(tmp_path / kind)
        m = write_shards(fineweb.local_documents(files), out, "l", shard_size=120, val_tokens=60, progress=False)
        assert all_tokens(out, m) == ref, kind
    # several files of several types in one run: their documents in the order given
    files = fineweb.expand_inputs([os.path.join(d, "docs.parquet"), os.path.join(d, "txt", "doc_000[0-2].txt")])
    assert list(fineweb.local_documents(files)) == EDGE_DOCS + EDGE_DOCS[:3]


def test_local_input_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        fineweb.expand_inputs([os.path.join(d, "nope.jsonl")])
    with pytest.raises(FileNotFoundError, match=r"\*.parquet matches no file"):
        fineweb.expand_inputs([os.path.join(d, "*.parquet")])
    open(os.path.join(d, "a.csv"), "w").write("text\nhi\n")
    with pytest.raises(InputError, match=r"a.csv: cannot read '.csv' files; expected .jsonl"):
        fineweb.expand_inputs([os.path.join(d, "a.csv")])

    nofield = os.path.join(d, "nofield.jsonl")
    open(nofield, "w").write('{"content": "a"}\n{"content": "b"}\n')
    with pytest.raises(InputError, match=r"nofield.jsonl has no 'text' field.*content"):
        list(fineweb.local_documents([nofield]))
    nocol = os.path.join(d, "nocol.parquet")
    pq.write_table(pa.table({"body": ["a", "b"]}), nocol)
    with pytest.raises(InputError, match=r"nocol.parquet has no 'text' field.*body"):
        list(fineweb.local_documents([nocol]))
    null = os.path.join(d, "null.jsonl")
    open(null, "w").write('{"text": "a"}\n{"text": null}\n')
    with pytest.raises(InputError, match=r"null.jsonl: record 1 has 'text' = None, expected a string"):
        list(fineweb.local_documents([null]))

    empty = os.path.join(d, "empty.jsonl")
    open(empty, "w").close()
    assert list(fineweb.local_documents([empty])) == []
    source = {"kind": "local", "files": [empty]}
    with pytest.raises(InputError, match=r"--input .*empty.jsonl has no documents"):
        write_shards(fineweb.local_documents([empty]), os.path.join(d, "out"), "l", source=source, progress=False)
    assert not glob.glob(os.path.join(d, "out", "*.bin"))


def test_too_small_for_a_train_split_is_an_error(tmp_path):
    n = len(reference(EDGE_DOCS))
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match=rf"only {n} tokens, all in the validation split \(--val_tokens {n}\).*lower --val_tokens"):
        write_shards(EDGE_DOCS, out, "e", val_tokens=n, progress=False)
    assert os.listdir(out) == []  # nothing written
    m = write_shards(EDGE_DOCS, out, "e", val_tokens=n - 1, progress=False)  # one token left: a train shard
    assert [s["tokens"] for s in m["shards"]] == [n - 1, 1]


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path):
    out = str(tmp_path / "out")
    write_shards(EDGE_DOCS, out, "old", shard_size=50, val_tokens=50, progress=False)
    old = sorted(os.listdir(out))
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    with pytest.raises(FileExistsError, match=r"--out_dir .*out is not empty.*--overwrite"):
        write_shards(EDGE_DOCS[:2], out, "new", progress=False)
    assert sorted(os.listdir(out)) == sorted(old + ["notes.txt"])  # untouched
    m = write_shards(EDGE_DOCS[:2], out, "new", shard_size=50, val_tokens=2, progress=False, overwrite=True)
    # the old run's shards are gone (the loader would read them all), other files stay
    assert sorted(os.listdir(out)) == sorted([s["name"] for s in m["shards"]] + ["manifest.json", "notes.txt"])
    assert all_tokens(out, m) == reference(EDGE_DOCS[:2])


def test_interrupted_run_leaves_only_complete_shards(shakespeare_docs, tmp_path, monkeypatch):
    def docs_then_crash():
        yield from shakespeare_docs[:20]
        raise KeyboardInterrupt

    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        write_shards(docs_then_crash(), out, "shk", shard_size=2000, val_tokens=2000, progress=False, chunk_chars=1000)
    names = sorted(os.listdir(out))
    assert "manifest.json" not in names and names and all(n.endswith(".bin") for n in names)
    ref = reference(shakespeare_docs)
    val = [n for n in names if "_val_" in n]
    train = sorted(n for n in names if "_train_" in n)
    got = [t for n in val + train for t in read_raw(os.path.join(out, n))[1]]
    assert all(fineweb.read_shard_header(os.path.join(out, n)) == 2000 for n in names)  # whole shards only
    assert got == ref[: len(got)]

    # a crash inside a shard's write leaves a .tmp, which the loader's *_train_*.bin never matches
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fineweb.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        fineweb.write_shard(os.path.join(out, "x_train_000009.bin"), [1, 2, 3])
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(out, "x_train_000009.bin"))
    assert os.path.exists(os.path.join(out, "x_train_000009.bin.tmp"))
    assert not any(p.endswith(".tmp") for p in glob.glob(os.path.join(out, "*_train_*.bin")))
    # and --overwrite clears such leftovers
    fineweb.prepare_out_dir(out, overwrite=True)
    assert os.listdir(out) == []


def test_tokens_must_fit_uint16(tmp_path):
    with pytest.raises(ValueError, match="fit uint16"):
        fineweb.write_shard(str(tmp_path / "x_train_000001.bin"), [1, 65536])
    assert fineweb.tokenize_docs(["hi"]).dtype == np.uint16


def test_embedded_corpus(tmp_path):
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]  # the reference: the module itself, one document per topic
    out = str(tmp_path / "data" / "pydoc")
    m = fineweb.prepare_embedded(out)
    ref = reference(docs)
    assert all_tokens(out, m) == ref
    assert m["documents"] == len(docs) and m["tokens"] == len(ref) > 100_000
    assert [(s["name"], s["split"]) for s in m["shards"]] == [("pydoc_val_000000.bin", "val"), ("pydoc_train_000001.bin", "train")]
    assert m["shards"][0]["tokens"] == fineweb.EMBEDDED_VAL_TOKENS < 0.15 * len(ref)  # most of it for training
    assert m["source"]["kind"] == "embedded" and "pydoc_data.topics" in m["source"]["name"]
    assert os.listdir(str(tmp_path / "data")) == ["pydoc"]  # the temporary folder was renamed
    # called again: the same corpus is there, so nothing is rewritten
    mtime = os.path.getmtime(os.path.join(out, "pydoc_train_000001.bin"))
    assert fineweb.prepare_embedded(out) == m
    assert os.path.getmtime(os.path.join(out, "pydoc_train_000001.bin")) == mtime
    with pytest.raises(FileExistsError, match="--overwrite"):
        fineweb.prepare_embedded(out, val_tokens=1000)


def test_command_line(tmp_path):
    out = str(tmp_path / "pd")
    args = ["--embedded", "--out_dir", out, "--num_proc", "1", "--shard_size", "50000", "--val_tokens", "5000"]
    m = fineweb.main(args)
    n = m["tokens"]
    assert [s["tokens"] for s in m["shards"]] == [5000, 50000, 50000, n - 105000]
    with pytest.raises(FileExistsError):
        fineweb.main(args)
    assert fineweb.main(args[:-2] + ["--val_tokens", "6000", "--overwrite"])["shards"][0]["tokens"] == 6000
    assert len(glob.glob(os.path.join(out, "*.bin"))) == 4

    p = fineweb.get_parser()
    for bad in (["--embedded", "--input", "a.txt"], ["--embedded", "--config", "sample-100BT"], ["--embedded", "--streaming"],
                ["--embedded", "--shard_size", "0"], ["--embedded", "--val_tokens", "0"], ["--input", "a.txt"],
                ["--embedded", "--prefix", "a/b"]):
        with pytest.raises(SystemExit):
            fineweb.check_args(p, p.parse_args(bad))
    help_text = p.format_help()
    assert "--overwrite" in help_text and "refused" in help_text and "pydoc_data.topics" in help_text

    a = fineweb.check_args(p, p.parse_args([]))
    assert (a.dataset, a.config, a.out_dir, a.prefix) == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "edu_fineweb10B", "edufineweb")
    a = fineweb.check_args(p, p.parse_args(["--dataset", "HuggingFaceFW/fineweb", "--config", "sample-100BT"]))
    assert (a.out_dir, a.prefix) == ("fineweb100B", "fineweb")


def test_names_match_train_gpt2_defaults():
    train_gpt2 = pytest.importorskip("train_gpt2")
    assert train_gpt2.get_parser().get_default("data_dir") == fineweb.default_names(fineweb.DEFAULT_DATASET, fineweb.DEFAULT_CONFIG)[0]
    assert train_gpt2.PRESETS["cpu"]["data_dir"] == fineweb.EMBEDDED_OUT_DIR


def test_hugging_face_source(monkeypatch):
    """hf_documents asks `datasets` for the right dataset and yields the text column in order (a
    stand-in load_dataset: no network here)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        ds = datasets.Dataset.from_dict({"id": list(range(len(EDGE_DOCS))), "text": EDGE_DOCS})
        return ds.to_iterable_dataset() if streaming else ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(fineweb.hf_documents()) == EDGE_DOCS
    assert list(fineweb.hf_documents("HuggingFaceFW/fineweb", "sample-100BT", streaming=True)) == EDGE_DOCS
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", False), ("HuggingFaceFW/fineweb", "sample-100BT", "train", True)]


def test_benchmark_checks_tokens_and_reports_both():
    docs = EDGE_DOCS * 3
    r = fineweb.benchmark(docs, num_proc=1, rounds=1)
    assert r["tokens"] == len(reference(docs)) - len(docs)  # the documents' tokens, without the EOTs
    assert r["pipeline_tok_s"] > 0 and r["tiktoken_tok_s"] > 0
    assert r["ratio"] == pytest.approx(r["pipeline_tok_s"] / r["tiktoken_tok_s"])
