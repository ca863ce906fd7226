"""fineweb.py: shards hold [EOT] + encode_ordinary(doc) for every document in order, in llm.c's
format; val first; the same output for 1 and 2 processes; .jsonl/.json/.parquet/.txt inputs agree;
clear input errors; safe re-runs (--overwrite swaps a complete set in, a failed run changes
nothing); the data-set checks the loader relies on (find_shards, check_vocab, write_manifest);
the embedded corpus; the command line and its one-line errors; the benchmark."""

import fnmatch
import glob
import json
import os
import re
import struct

import numpy as np
import pytest

import fineweb
from common import UserError
from fineweb import InputError, write_shards
from shards import NoShardsError, ShardError, check_vocab, find_shards, load_shard, read_manifest, write_manifest, write_shard
from tokenizer import get_tokenizer

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
    assert len(load_shard(os.path.join(str(tmp_path), m["shards"][1]["name"]))) == 100


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
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        fineweb.expand_inputs([os.path.join(d, "nope.jsonl")])
    with pytest.raises(InputError, match=r"\*.parquet matches no file"):
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
    assert not os.path.exists(os.path.join(d, "out"))

    # a file that is not what its name says: one InputError naming it, whatever `datasets` raised
    broken = os.path.join(d, "broken.jsonl")
    open(broken, "w").write('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(InputError, match=r"broken.jsonl: cannot read it as json \(ArrowInvalid"):
        list(fineweb.local_documents([broken]))
    not_parquet = os.path.join(d, "x.parquet")
    open(not_parquet, "w").write("garbage")
    with pytest.raises(InputError, match=r"x.parquet: cannot read it as parquet"):
        list(fineweb.local_documents([not_parquet]))
    latin1 = os.path.join(d, "latin1.txt")
    open(latin1, "wb").write("café".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt: cannot read it as UTF-8 text \(UnicodeDecodeError"):
        list(fineweb.local_documents([latin1]))


def test_too_small_for_a_train_split_is_an_error(tmp_path):
    n = len(reference(EDGE_DOCS))
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match=rf"only {n} tokens, all in the validation split \(--val_tokens {n}\).*lower --val_tokens"):
        write_shards(EDGE_DOCS, out, "e", val_tokens=n, progress=False)
    assert not os.path.exists(out)  # nothing written
    m = write_shards(EDGE_DOCS, out, "e", val_tokens=n - 1, progress=False)  # one token left: a train shard
    assert [s["tokens"] for s in m["shards"]] == [n - 1, 1]


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path):
    out = str(tmp_path / "out")
    write_shards(EDGE_DOCS, out, "old", shard_size=50, val_tokens=50, progress=False)
    old = sorted(os.listdir(out))
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    with pytest.raises(InputError, match=r"--out_dir .*out is not empty.*--overwrite"):
        write_shards(EDGE_DOCS[:2], out, "new", progress=False)
    assert sorted(os.listdir(out)) == sorted(old + ["notes.txt"])  # untouched
    m = write_shards(EDGE_DOCS[:2], out, "new", shard_size=50, val_tokens=2, progress=False, overwrite=True)
    # the old run's shards are gone (the loader would read them all), other files stay
    assert sorted(os.listdir(out)) == sorted([s["name"] for s in m["shards"]] + ["manifest.json", "notes.txt"])
    assert all_tokens(out, m) == reference(EDGE_DOCS[:2])
    a_file = str(tmp_path / "a_file")
    open(a_file, "w").close()
    with pytest.raises(InputError, match=r"--out_dir .*a_file is a file"):
        write_shards(EDGE_DOCS, a_file, "x", progress=False)


def snapshot(d):
    """Every file under d, with its bytes."""
    return {os.path.relpath(os.path.join(root, f), d): open(os.path.join(root, f), "rb").read()
            for root, _, files in os.walk(d) for f in files}


def test_overwrite_swaps_in_only_a_complete_set(shakespeare_docs, tmp_path, monkeypatch, capsys):
    """--overwrite with an input that fails half-way (a malformed .jsonl after a good one, with
    shards already written) or that holds nothing leaves the old shards and manifest byte for
    byte; one that succeeds replaces them and keeps the files that are not ours."""
    d = tmp_path / "in"
    d.mkdir()
    good, bad, empty = (str(d / n) for n in ("good.jsonl", "bad.jsonl", "empty.jsonl"))
    with open(good, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in shakespeare_docs[:10])
    open(bad, "w").write('{"text": "fine"}\n{"text": broken}\n')
    open(empty, "w").close()
    out = str(tmp_path / "out")
    write_shards(EDGE_DOCS, out, "old", shard_size=50, val_tokens=50, progress=False)
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    before, entries = snapshot(out), sorted(os.listdir(str(tmp_path)))

    written = []
    monkeypatch.setattr(fineweb, "write_shard", lambda path, tokens: (written.append(path), write_shard(path, tokens)))
    for files in ([good, bad], [empty]):
        with pytest.raises(InputError, match="bad.jsonl: cannot read it as json" if bad in files else "has no documents"):
            write_shards(fineweb.local_documents(files), out, "new", shard_size=200, val_tokens=100, overwrite=True,
                         progress=False, chunk_chars=500, source={"kind": "local", "files": files})
        assert snapshot(out) == before, files  # the old shards, manifest and notes.txt as they were
        assert sorted(os.listdir(out)) == sorted(before) and sorted(os.listdir(str(tmp_path))) == entries  # no staging left
    assert len(written) > 3  # the failing run had written shards of its own before it failed
    # the command line: one line, exit 2, the same guarantee
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--input", good, bad, "--out_dir", out, "--overwrite", "--num_proc", "1"])
    assert e.value.code == 2 and "bad.jsonl" in capsys.readouterr().err
    assert snapshot(out) == before

    new = fineweb.main(["--input", good, "--out_dir", out, "--prefix", "new", "--shard_size", "2000",
                        "--val_tokens", "1000", "--overwrite", "--num_proc", "1"])
    assert sorted(os.listdir(out)) == sorted([s["name"] for s in new["shards"]] + ["manifest.json", "notes.txt"])
    assert read_manifest(out) == new and open(os.path.join(out, "notes.txt")).read() == "mine"
    assert len(find_shards(out, "train")) == len(new["shards"]) - 1  # a data set the loader accepts


def test_interrupted_run_leaves_nothing(shakespeare_docs, tmp_path, monkeypatch):
    def docs_then_crash():
        yield from shakespeare_docs[:20]
        raise KeyboardInterrupt

    # a new --out_dir, under folders that do not exist yet: all of it goes
    out = str(tmp_path / "a" / "b" / "out")
    with pytest.raises(KeyboardInterrupt):
        write_shards(docs_then_crash(), out, "shk", shard_size=2000, val_tokens=2000, progress=False, chunk_chars=1000)
    assert os.listdir(str(tmp_path)) == []
    # an existing, empty one stays empty
    out = str(tmp_path / "out")
    os.makedirs(out)
    with pytest.raises(KeyboardInterrupt):
        write_shards(docs_then_crash(), out, "shk", shard_size=2000, val_tokens=2000, progress=False, chunk_chars=1000)
    assert os.listdir(out) == []

    # a crash inside a shard's write leaves nothing under the shard's name, and removes its .tmp
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("common.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shard(os.path.join(out, "x_train_000009.bin"), [1, 2, 3])
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(out, "x_train_000009.bin"))
    assert os.listdir(out) == []
    # a .tmp that a kill -9 mid-write leaves is never matched by the loader's *_train_*.bin
    open(os.path.join(out, "x_train_000009.bin.tmp"), "wb").write(b"half a shard")
    assert glob.glob(os.path.join(out, "*_train_*.bin")) == []
    # and --overwrite clears such leftovers, and the staging folder of a killed run
    os.makedirs(os.path.join(out, fineweb.STAGING_PREFIX + "killed"))
    m = write_shards(EDGE_DOCS, out, "e", shard_size=50, val_tokens=50, progress=False, overwrite=True)
    assert sorted(os.listdir(out)) == sorted([s["name"] for s in m["shards"]] + ["manifest.json"])


def test_tokens_must_fit_uint16(tmp_path):
    with pytest.raises(ValueError, match="fit uint16"):
        write_shard(str(tmp_path / "x_train_000001.bin"), [1, 65536])
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
    with pytest.raises(InputError, match="--overwrite"):
        fineweb.prepare_embedded(out, val_tokens=1000)


def test_command_line(tmp_path):
    out = str(tmp_path / "pd")
    args = ["--embedded", "--out_dir", out, "--num_proc", "1", "--shard_size", "50000", "--val_tokens", "5000"]
    m = fineweb.main(args)
    n = m["tokens"]
    assert [s["tokens"] for s in m["shards"]] == [5000, 50000, 50000, n - 105000]
    with pytest.raises(SystemExit):  # not empty (test_bad_invocations checks the message)
        fineweb.main(args)
    assert fineweb.main(args[:-2] + ["--val_tokens", "6000", "--overwrite"])["shards"][0]["tokens"] == 6000
    assert len(glob.glob(os.path.join(out, "*.bin"))) == 4

    a = fineweb.parse_args([])
    assert (a.dataset, a.config, a.out_dir, a.prefix) == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "edu_fineweb10B", "edufineweb")
    a = fineweb.parse_args(["--dataset", "HuggingFaceFW/fineweb", "--config", "sample-100BT"])
    assert (a.out_dir, a.prefix) == ("fineweb100B", "fineweb")


@pytest.fixture
def bad_inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in EDGE_DOCS))
    (d / "bad.jsonl").write_text('{"text": "a"}\n{"text": oops}\n')
    (d / "empty.jsonl").write_text("")
    (d / "notext.jsonl").write_text('{"body": "a"}\n')
    (d / "a.csv").write_text("text\nhi\n")
    (d / "a_file").write_text("")
    return str(d)


# {d}: a folder of inputs (bad_inputs), {out}: an --out_dir that does not exist
BAD_INVOCATIONS = [
    (["--num_proc", "0"], "--num_proc must be >= 1, got 0"),
    (["--num_proc", "two"], "argument --num_proc: invalid int value: 'two'"),
    (["--shard_size", "-1"], "--shard_size must be >= 1, got -1"),
    (["--val_tokens", "0"], "--val_tokens must be >= 1"),
    (["--benchmark_rounds", "0"], "--benchmark_rounds must be >= 1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--embedded", "--input", "{d}/good.jsonl"], "--input and --embedded are two different sources"),
    (["--embedded", "--config", "sample-100BT"], "--config is for Hugging Face datasets"),
    (["--input", "{d}/good.jsonl", "--streaming", "--out_dir", "{out}"], "--streaming is for Hugging Face datasets"),
    (["--input", "{d}/good.jsonl"], "--input needs --out_dir"),
    (["--embedded", "--prefix", "a/b", "--out_dir", "{out}"], "--prefix 'a/b'"),
    (["--input", "{d}/missing.jsonl", "--out_dir", "{out}"], "--input {d}/missing.jsonl: no such file"),
    (["--input", "{d}/*.parquet", "--out_dir", "{out}"], "--input {d}/*.parquet matches no file"),
    (["--input", "{d}", "--out_dir", "{out}"], "--input {d} is a folder"),
    (["--input", "{d}/a.csv", "--out_dir", "{out}"], "--input {d}/a.csv: cannot read '.csv' files"),
    (["--input", "{d}/good.jsonl", "{d}/bad.jsonl", "--out_dir", "{out}"], "--input {d}/bad.jsonl: cannot read it as json"),
    (["--input", "{d}/notext.jsonl", "--out_dir", "{out}"], "--input {d}/notext.jsonl has no 'text' field"),
    (["--input", "{d}/empty.jsonl", "--out_dir", "{out}"], "--input {d}/empty.jsonl has no documents"),
    (["--input", "{d}/good.jsonl", "--out_dir", "{out}", "--val_tokens", "100000"], "lower --val_tokens"),
    (["--input", "{d}/good.jsonl", "--out_dir", "{d}/a_file"], "--out_dir {d}/a_file is a file"),
    (["--input", "{d}/good.jsonl", "--out_dir", "{d}"], "--out_dir {d} is not empty"),
    (["--index", "{d}/nowhere"], "--index {d}/nowhere is not a folder"),
    (["--index", "{d}"], "{d} holds no shards"),
    (["--index", "{d}", "--prefix", "x"], "--prefix does not apply"),
    ([], "--dataset HuggingFaceFW/fineweb-edu --config sample-10BT: Couldn't reach"),  # no network (a stand-in)
]


@pytest.mark.parametrize("argv, message", BAD_INVOCATIONS, ids=[" ".join(a) or "no-network" for a, _ in BAD_INVOCATIONS])
def test_bad_invocations(bad_inputs, tmp_path, monkeypatch, capsys, argv, message):
    """Each user mistake ends the command line with one line that names the flag or file, exit
    status 2, no traceback, and nothing left on disk."""
    import datasets

    def unreachable(*a, **k):  # what `datasets` raises without a network (the real one retries for ~25 s)
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub (LocalEntryNotFoundError)")

    if not argv:
        monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.chdir(tmp_path)  # where the default --out_dir would go
    d, out = bad_inputs, str(tmp_path / "out")
    inputs_before = sorted(os.listdir(d))
    with pytest.raises(SystemExit) as e:
        fineweb.main([a.format(d=d, out=out) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("fineweb.py: error: "), err
    assert message.format(d=d) in err
    assert sorted(os.listdir(str(tmp_path))) == ["in"] and sorted(os.listdir(d)) == inputs_before  # nothing made
    if not argv:
        assert "needs the network" in err and "--input" in err and "--embedded" in err


def test_help_text():
    # (every flag's help and default, in every script: tests/test_cli.py)
    help_text = fineweb.get_parser().format_help()
    assert "(default: 100000000)" in help_text and "--overwrite" in help_text and "pydoc_data.topics" in help_text


def test_llmc_names(tmp_path):
    """--prefix edu_fineweb gives the names llm.c's train_gpt2.cu globs, edu_fineweb_{train,val}_*.bin,
    and --help says so, as it says what modded-nanogpt needs."""
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in EDGE_DOCS))
    out = str(tmp_path / "edu_fineweb10B")
    m = fineweb.main(["--input", str(src), "--out_dir", out, "--prefix", "edu_fineweb", "--shard_size", "60",
                      "--val_tokens", "40", "--num_proc", "1"])
    names = sorted(os.listdir(out))
    assert fnmatch.filter(names, "edu_fineweb_val_*.bin") == ["edu_fineweb_val_000000.bin"]
    train = fnmatch.filter(names, "edu_fineweb_train_*.bin")
    assert train == [s["name"] for s in m["shards"][1:]] and len(train) >= 2
    help_text = fineweb.get_parser().format_help()
    assert "--prefix edu_fineweb" in help_text and "edu_fineweb_{train,val}_*.bin" in help_text
    assert "10,485,760" in help_text and "nproc*B*T+1" in help_text


def test_num_proc_default_is_the_cpus_this_process_may_use(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert fineweb.get_parser().get_default("num_proc") == len(os.sched_getaffinity(0))
    monkeypatch.setattr(fineweb.os, "sched_getaffinity", lambda pid: {3}, raising=False)  # e.g. taskset -c 3
    monkeypatch.setattr(fineweb.os, "cpu_count", lambda: 6)
    assert fineweb.available_cpus() == 1
    monkeypatch.delattr(fineweb.os, "sched_getaffinity")  # macOS, Windows
    assert fineweb.available_cpus() == 6


# -----------------------------------------------------------------------------
# the data-set checks train_gpt2.py's loader relies on


def make_data_set(tmp_path):
    d = str(tmp_path / "ds")
    return d, write_shards(EDGE_DOCS, d, "e", shard_size=40, val_tokens=30, progress=False)


def test_find_shards_accepts_a_complete_data_set(tmp_path):
    d, m = make_data_set(tmp_path)
    names = [s["name"] for s in m["shards"]]
    assert find_shards(d, "val") == [os.path.join(d, names[0])]
    assert find_shards(d, "train", vocab_size=50257) == [os.path.join(d, n) for n in names[1:]]
    # max_token per shard, from the reference's tokens
    ref = np.array(reference(EDGE_DOCS))
    bounds = np.cumsum([0] + [s["tokens"] for s in m["shards"]])
    assert [s["max_token"] for s in m["shards"]] == [int(ref[a:b].max()) for a, b in zip(bounds, bounds[1:])]
    assert check_vocab(d, 50257) == ref.max() == EOT


def add_second_prefix(d, m):
    write_shard(os.path.join(d, "other_train_000001.bin"), np.arange(50))


def add_unlisted_shard(d, m):
    write_shard(os.path.join(d, "e_train_000099.bin"), np.arange(50))


def remove_last_shard(d, m):
    os.remove(os.path.join(d, m["shards"][-1]["name"]))


def replace_a_shard(d, m):
    write_shard(os.path.join(d, m["shards"][1]["name"]), np.arange(7))


def break_manifest(d, m):
    open(os.path.join(d, "manifest.json"), "w").write("{not json")


@pytest.mark.parametrize("damage, message", [
    (add_second_prefix, "holds shards of 2 data sets (prefixes e, other)"),
    (add_unlisted_shard, "holds 1 shard(s) that its manifest.json does not list (e_train_000099.bin)"),
    (remove_last_shard, "has {k} of the {n} shards its manifest.json lists"),
    (replace_a_shard, "e_train_000001.bin has 7 tokens but"),
    (break_manifest, "manifest.json is not a manifest that fineweb.py wrote"),
])
def test_find_shards_refuses_a_mixed_or_unfinished_data_set(tmp_path, damage, message):
    d, m = make_data_set(tmp_path)
    damage(d, m)
    for check in (lambda: find_shards(d, "train"), lambda: check_vocab(d, 50257)):
        with pytest.raises(ShardError) as e:
            check()
        msg = str(e.value)
        assert message.format(k=len(m["shards"]) - 1, n=len(m["shards"])) in msg, msg
        assert d in msg and "fineweb.py" in msg  # names the folder, says how to fix it
        assert isinstance(e.value, UserError)


def test_missing_folder_or_split(tmp_path):
    with pytest.raises(NoShardsError, match=r"--data_dir .*nowhere does not exist.*python fineweb.py --out_dir") as e:
        find_shards(str(tmp_path / "nowhere"), "train")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ShardError)  # as train_gpt2's tests expect
    d = str(tmp_path / "valonly")
    os.makedirs(d)
    write_shard(os.path.join(d, "t_val_000000.bin"), np.arange(100))
    write_manifest(d)
    with pytest.raises(NoShardsError, match=r"valonly has no train shards \(\*_train_\*.bin\)"):
        find_shards(d, "train")
    assert find_shards(d, "val") == [os.path.join(d, "t_val_000000.bin")]


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path):
    d = str(tmp_path / "v")
    os.makedirs(d)
    write_shard(os.path.join(d, "v_val_000000.bin"), np.arange(100))
    write_shard(os.path.join(d, "v_train_000001.bin"), np.arange(100))
    bad = os.path.join(d, "v_train_000002.bin")
    write_shard(bad, np.r_[np.arange(99), 700])
    write_manifest(d)
    assert check_vocab(d, 701) == 700 and check_vocab(d, 100, "val") == 99
    for check in (lambda: check_vocab(d, 700), lambda: find_shards(d, "train", vocab_size=512)):
        with pytest.raises(ShardError, match=re.escape(f"shard {bad} holds token id 700 (its max_token in manifest.json), "
                                                       "but the model's vocab_size is")):
            check()
    # the loader's own check, when it loads the shard
    with pytest.raises(ShardError, match=re.escape(f"shard {bad} holds token id 700, but the model's vocab_size is 700")):
        load_shard(bad, vocab_size=700)
    assert len(load_shard(bad, vocab_size=701)) == 100
    # a manifest without max_token (an older fineweb.py's): the shards are read instead
    manifest = read_manifest(d)
    for s in manifest["shards"]:
        del s["max_token"]
    json.dump(manifest, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(ShardError, match=re.escape(f"shard {bad} holds token id 700, but")):
        check_vocab(d, 700)
    assert check_vocab(d, 701) == 700


def test_write_manifest_indexes_shards_of_another_tool(tmp_path, capsys):
    """Shards as llm.c's fineweb.py leaves them (the same format, edu_fineweb_* names, no
    manifest): write_manifest (or --index) records their counts, documents and largest ids."""
    d = str(tmp_path / "edu_fineweb10B")
    os.makedirs(d)
    stream = np.array([EOT, 1, 2, 3, EOT, 5, EOT, 300, 301, 302, 303, 304])  # three documents
    write_shard(os.path.join(d, "edu_fineweb_val_000000.bin"), stream[:5])
    write_shard(os.path.join(d, "edu_fineweb_train_000001.bin"), stream[5:9])
    write_shard(os.path.join(d, "edu_fineweb_train_000002.bin"), stream[9:])
    # taken whole by their headers, without a manifest (test_data_interop trains on them)
    assert find_shards(d, "train") == [os.path.join(d, f"edu_fineweb_train_00000{i}.bin") for i in (1, 2)]
    m = write_manifest(d)
    assert [(s["name"], s["split"], s["tokens"], s["documents"], s["max_token"]) for s in m["shards"]] == [
        ("edu_fineweb_val_000000.bin", "val", 5, 2, EOT),
        ("edu_fineweb_train_000001.bin", "train", 4, 1, EOT),
        ("edu_fineweb_train_000002.bin", "train", 3, 0, 304),
    ]
    assert (m["tokens"], m["documents"], m["val_tokens"], m["shard_size"]) == (12, 3, 5, 4)
    assert read_manifest(d) == m
    assert find_shards(d, "train") == [os.path.join(d, f"edu_fineweb_train_00000{i}.bin") for i in (1, 2)]
    # the command line: --index replaces a manifest only with --overwrite
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--index", d])
    assert e.value.code == 2 and "already has a manifest.json" in capsys.readouterr().err
    assert fineweb.main(["--index", d, "--overwrite"])["shards"] == m["shards"]
    # shards of two data sets are not indexed as one
    write_shard(os.path.join(d, "other_train_000001.bin"), [1, 2])
    with pytest.raises(ShardError, match="holds shards of 2 data sets"):
        write_manifest(d)


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


def write_gz(path, data):
    import gzip

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(data)


def test_folder_of_text_and_gzip_files(tmp_path, capsys):
    """A folder: its text files all levels down (.txt/.rst/.md and their .gz), one document each, in
    sorted path order, bytes as written (CRLF kept); other files skipped and counted aloud."""
    import gzip

    d = tmp_path / "docs"
    (d / "sub" / "deeper").mkdir(parents=True)
    files = {  # path -> document; os.walk yields b.txt (root's files) before sub/, sorting puts a/ first
        "b.txt": EDGE_DOCS[3],
        "a/x.rst.gz": EDGE_DOCS[5],
        "a/empty.md": "",
        "sub/deeper/c.RST": "Title\r\n=====\r\n\r\nCRLF stays.\r\n",
        "sub/y.txt.gz": EDGE_DOCS[2],
    }
    for name, text in files.items():
        if name.endswith(".gz"):
            write_gz(str(d / name), text.encode("utf-8"))
        else:
            os.makedirs(os.path.dirname(d / name), exist_ok=True)
            (d / name).write_bytes(text.encode("utf-8"))
    (d / "img.png").write_bytes(b"\x89PNG")
    write_gz(str(d / "sub" / "changelog.Debian.gz"), b"not a text type")
    write_gz(str(d / "sub" / "abi.yaml.gz"), b"a: 1")
    (d / "records.jsonl").write_text('{"text": "records are named or globbed, not taken from a folder"}\n')
    os.symlink(str(d / "sub"), str(d / "link"))

    got = fineweb.expand_inputs([str(d)])
    order = sorted(files)
    assert got == [str(d / name) for name in order]
    out = capsys.readouterr().out
    assert f"--input {d}: 5 text files; skipped 5 others (" in out
    for part in ("1 .png", "1 .debian.gz", "1 .yaml.gz", "1 .jsonl", "1 links to folders"):
        assert part in out, part
    docs = list(fineweb.local_documents(got))
    assert docs == [files[name] for name in order]
    m = write_shards(docs, str(tmp_path / "out"), "l", shard_size=100, val_tokens=50, progress=False)
    assert all_tokens(str(tmp_path / "out"), m) == reference(docs)

    # the same types named one by one, a record file compressed too, and the command line end to end
    write_gz(str(tmp_path / "r.jsonl.gz"), "".join(json.dumps({"text": t}) + "\n" for t in EDGE_DOCS).encode())
    assert list(fineweb.local_documents(fineweb.expand_inputs([str(tmp_path / "r.jsonl.gz"), str(d / "a" / "x.rst.gz")]))) == EDGE_DOCS + [EDGE_DOCS[5]]
    m = fineweb.main(["--input", str(d), "--out_dir", str(tmp_path / "cli"), "--shard_size", "100", "--val_tokens", "50"])
    assert m["documents"] == 5 and m["source"]["files"] == got


@pytest.mark.parametrize("damage, message", [
    (lambda good: good[: len(good) // 2], "EOFError"),                      # cut off
    (lambda good: b"just text, not gzip", "BadGzipFile"),                    # not gzip at all
    (lambda good: good[:10] + bytes(len(good) - 10), "while decompressing data"),  # corrupt deflate data (zlib.error)
    (lambda good: gzip_bytes("café".encode("latin-1")), "cannot read it as UTF-8 text (UnicodeDecodeError"),
], ids=["truncated", "not-gzip", "corrupt", "not-utf8"])
def test_unreadable_gzip_is_one_line_naming_the_file(tmp_path, capsys, damage, message):
    d = tmp_path / "docs"
    write_gz(str(d / "a.rst.gz"), b"fine")
    (d / "bad.rst.gz").write_bytes(damage(gzip_bytes(("A kernel document.\n" * 50).encode())))
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--input", str(d), "--out_dir", out])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"fineweb.py: error: --input {d / 'bad.rst.gz'}: cannot read it as ") and message in err, err
    assert not os.path.exists(out)


def gzip_bytes(data):
    import gzip

    return gzip.compress(data, mtime=0)


def test_shuffle_reads_the_input_files_in_a_seeded_order(tmp_path, capsys):
    """--shuffle SEED: the files in random.Random(SEED)'s order (recomputed here), the shards
    holding the documents in that order; the same seed gives the same data set."""
    import random

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i:02d}.txt").write_text(f"document number {i} about topic {i * 7}")
    files = sorted(str(p) for p in folder.iterdir())
    expected = files[:]
    random.Random(5).shuffle(expected)
    assert expected != files
    manifests = [fineweb.main(["--input", str(folder), "--out_dir", str(tmp_path / out), "--shuffle", "5",
                               "--val_tokens", "4", "--shard_size", "1000"]) for out in ("a", "b")]
    assert manifests[0]["source"]["files"] == expected and manifests[0]["source"]["shuffle_seed"] == 5
    enc = get_tokenizer()
    stream = np.concatenate([load_shard(str(tmp_path / "a" / s["name"])) for s in manifests[0]["shards"]])
    want = [t for path in expected for t in [enc.eot_token] + enc.encode_ordinary(open(path).read())]
    assert stream.tolist() == want
    assert [s["tokens"] for s in manifests[1]["shards"]] == [s["tokens"] for s in manifests[0]["shards"]]
    with pytest.raises(SystemExit):
        fineweb.main(["--embedded", "--out_dir", str(tmp_path / "c"), "--shuffle", "1"])
    assert "--shuffle orders --input's files; give --input" in capsys.readouterr().err
