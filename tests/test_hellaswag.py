"""hellaswag.py: the scorer against a plain per-row recomputation on tiny random GPT-2s, batching
and padding, our checkpoints against their Hugging Face export, the split over ranks, the checks
on every line of the data, the download, the command line end to end and its one-line errors. No
network: the downloads go to a closed local port, the Hugging Face hub is switched to offline."""

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

import hellaswag
from common import UserError
from device import autocast_and_scaler
from model import GPT, GPTConfig
from tokenizer import GPT2_VOCAB_SIZE, get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# made-up examples in the official format (the same keys as hellaswag_val.jsonl), of uneven
# lengths: the longest rows are over 64 tokens, so batches get padded to 32, 64 and 96
EXAMPLES = [
    dict(activity_label="Washing dishes", ctx_a="A man stands at a sink full of plates.", ctx_b="he",
         endings=["turns on the tap and rinses a plate under the water.", "jumps into the pool.",
                  "plays a guitar on the stage while the crowd cheers loudly.", "sleeps."],
         label=0, split_type="indomain", source_id="activitynet~v_made_up_1"),
    dict(activity_label="Kite flying", ctx_a="Two children run across a windy field holding strings.",
         ctx_b="a red kite",
         endings=["is cooked in a pan.", "rises into the sky above them and dances in the wind.",
                  "reads a newspaper.", "is sold at the market for a good price to an old woman."],
         label=1, split_type="zeroshot", source_id="activitynet~v_made_up_2"),
    dict(activity_label="Home and Garden",
         ctx_a="[header] How to repot a houseplant [title] Choose a new pot. [step] Pick a pot one or two "
               "inches wider than the old one, with a hole in the bottom so that water can drain.",
         ctx_b="",
         endings=["[title] Water the plant a day before. [step] Moist soil holds together and slides out of "
                  "the old pot more easily.",
                  "[title] Paint the pot blue. [step] Blue is the best color for every plant.",
                  "[title] Buy a car. [step] Cars are useful for carrying large plants home.",
                  "[title] Remove the roots. [step] A plant does not need its roots after repotting."],
         label=0, split_type="indomain", source_id="wikihow~made_up_3"),
    dict(activity_label="Cooking", ctx_a="A woman cracks three eggs into a bowl.", ctx_b="she",
         endings=["throws the bowl at the wall.", "whisks them with a fork until smooth.",
                  "puts on her running shoes.", "sings to the eggs."],
         label=1, split_type="indomain", source_id="activitynet~v_made_up_4"),
    dict(activity_label="Personal Care and Style",
         ctx_a="[header] How to tie a tie [title] Drape the tie around your neck. [step] The wide end should "
               "hang about twelve inches lower than the narrow end.",
         ctx_b="",
         endings=["[title] Cut the tie in half. [step] Two short ties are easier to knot.",
                  "[title] Cross the wide end over the narrow end. [step] Then bring it up through the loop "
                  "around your neck and down through the knot in front.",
                  "[title] Iron your socks. [step] Socks should be pressed flat before any formal event.",
                  "[title] Call a friend. [step] Ask them to wear the tie instead of you."],
         label=1, split_type="zeroshot", source_id="wikihow~made_up_5"),
    dict(activity_label="Playing piano", ctx_a="A boy sits down at a piano.", ctx_b="he",
         endings=["eats the keys.", "opens the lid.", "places his hands on the keys and starts to play a song.",
                  "leaves."],
         label=2, split_type="indomain", source_id="activitynet~v_made_up_6"),
    dict(activity_label="Surfing", ctx_a="A surfer paddles out past the breaking waves.", ctx_b="the surfer",
         endings=["stands up on the board as a wave lifts it.", "orders a pizza.", "knits a scarf.",
                  "drives away in a truck."],
         label=0, split_type="indomain", source_id="activitynet~v_made_up_7"),
]


def official_line(i, e, label=True):
    d = {"ind": 100 + i, "activity_label": e["activity_label"], "ctx_a": e["ctx_a"], "ctx_b": e["ctx_b"],
         "ctx": (e["ctx_a"] + " " + e["ctx_b"]).strip(), "split": "val", "split_type": e["split_type"],
         "label": e["label"], "endings": e["endings"], "source_id": e["source_id"]}
    if not label:
        d["split"] = "test"
        del d["label"]
    return json.dumps(d)


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def val_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "hellaswag_val.jsonl",
                       [official_line(i, e) for i, e in enumerate(EXAMPLES)])


@pytest.fixture
def examples(val_file):
    return hellaswag.load_examples(file=val_file)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=50257)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_hf")
    hf_model.save_pretrained(d)
    return str(d)


def hf_logits(hf):
    return lambda idx: hf(idx, use_cache=False).logits


def reference_scores(logits_fn, examples, block_size=None):
    """Summed and mean ending losses (n, 4), computed the plain way: one candidate row per forward
    (its last block_size tokens, given block_size), cross-entropy of the ending tokens, over
    GPT-2's 50257 real vocabulary entries."""
    enc = get_tokenizer()
    sums, means = [], []
    for ex in examples:
        ctx = enc.encode_ordinary(ex.ctx)
        row_sums, row_means = [], []
        for ending in ex.endings:
            end = enc.encode_ordinary(" " + ending)
            row = ctx + end if block_size is None else (ctx + end)[-block_size:]
            with torch.no_grad():
                logits = logits_fn(torch.tensor([row]))[0]  # (T, V)
            # the prediction of ending token k is at the position before it
            pred = logits[-len(end) - 1 : -1, :GPT2_VOCAB_SIZE].float()  # (len(end), 50257)
            losses = F.cross_entropy(pred, torch.tensor(end), reduction="none")
            row_sums.append(losses.sum())
            row_means.append(losses.mean())
        sums.append(torch.stack(row_sums))
        means.append(torch.stack(row_means))
    return torch.stack(sums), torch.stack(means)


def test_load_examples_official_format(val_file, tmp_path):
    examples = hellaswag.load_examples(file=val_file)
    assert len(examples) == len(EXAMPLES)
    ex = examples[2]
    assert ex.ctx.startswith("[header] How to repot a houseplant") and ex.endings == EXAMPLES[2]["endings"]
    assert (ex.label, ex.line, ex.index, ex.file) == (0, 3, 2, val_file)
    assert [e.label for e in hellaswag.load_examples(file=val_file, limit=3)] == [0, 1, 0]
    # blank lines are skipped, and line numbers are the file's
    lines = [official_line(0, EXAMPLES[0]), "", "   ", official_line(1, EXAMPLES[1])]
    got = hellaswag.load_examples(file=write_jsonl(tmp_path / "blank.jsonl", lines))
    assert [(e.line, e.index, e.label) for e in got] == [(1, 0, 0), (4, 1, 1)]
    # the padded lengths of the batches below need rows both over and under 64 tokens
    lengths = [hellaswag.row_length(e) for e in examples]
    assert min(lengths) < 32 and 64 < max(lengths) <= 128


def test_losses_equal_plain_recomputation(hf_model, examples):
    fn = hf_logits(hf_model)
    ref_sum, ref_mean = reference_scores(fn, examples)
    s = hellaswag.score_batch(fn, examples, "cpu")
    torch.testing.assert_close(s.sum_loss, ref_sum)
    torch.testing.assert_close(s.mean_loss, ref_mean)
    # so the predictions, and acc and acc_norm, are the same
    assert torch.equal(s.pred, ref_sum.argmin(1)) and torch.equal(s.pred_norm, ref_mean.argmin(1))
    labels = torch.tensor([e.label for e in examples])
    counts = hellaswag.evaluate(fn, examples, "cpu", batch_size=3)
    assert counts["n"] == len(examples)
    assert counts["num_correct"] == (ref_sum.argmin(1) == labels).sum().item()
    assert counts["num_correct_norm"] == (ref_mean.argmin(1) == labels).sum().item()
    assert counts["acc_norm"] == counts["num_correct_norm"] / len(examples)
    # summed and mean losses rank the endings differently on this data, so acc and acc_norm
    # each test their own reduction
    assert not torch.equal(ref_sum.argmin(1), ref_mean.argmin(1))
    # the head path (hidden states, then the vocabulary projection of the ending positions only)
    # gives the same losses
    s_head = hellaswag.score_batch(lambda idx: hf_model.transformer(idx).last_hidden_state, examples, "cpu",
                                   head=hf_model.lm_head)
    torch.testing.assert_close(s_head.sum_loss, ref_sum)
    torch.testing.assert_close(s_head.mean_loss, ref_mean)
    # build-nanogpt's loop, which the benchmark times, too
    one = [hellaswag.score_one_example(fn, e, "cpu") for e in examples]
    torch.testing.assert_close(torch.cat([o.sum_loss for o in one]), ref_sum)
    torch.testing.assert_close(torch.cat([o.mean_loss for o in one]), ref_mean)


def test_batching_and_padding_change_no_loss(hf_model, examples):
    fn = hf_logits(hf_model)
    base = hellaswag.score_batch(fn, examples, "cpu")  # one forward, no padding past the longest row
    seen = set()

    def record(batch, s):
        seen.add(len(batch))

    for batch_size, pad_multiple in ((1, 1), (3, 32), (len(examples), 32), (len(examples), 1)):
        s = hellaswag.score_examples(fn, examples, "cpu", batch_size=batch_size, pad_multiple=pad_multiple,
                                     block_size=128, on_batch=record)
        for got, want in zip(s, base):
            torch.testing.assert_close(got, want)
    assert seen == {1, 3, len(examples) % 3, len(examples)}  # a last, short batch was padded
    # dummy rows past the examples', and padding to the whole block
    s = hellaswag.score_batch(fn, examples[:2], "cpu", rows=12, pad_multiple=128)
    for got, want in zip(s, base):
        torch.testing.assert_close(got, want[:2])


def test_padded_vocabulary_and_bfloat16(examples):
    """The 47 padding rows of a 50304 vocabulary stay out of the softmax; bfloat16 autocast keeps the
    losses in float32 and close to float32's. One torch.autocast object serves every batch: it is
    entered again for each, and left off after."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        gpt.lm_head.weight[GPT2_VOCAB_SIZE:] *= 500  # padding logits that would dominate the softmax
    fn = lambda idx: gpt(idx)[0]  # noqa: E731
    ref_sum, ref_mean = reference_scores(fn, examples)
    s = hellaswag.score_batch(fn, examples, "cpu")
    torch.testing.assert_close(s.sum_loss, ref_sum)
    autocast = autocast_and_scaler("cpu", "bfloat16")[0]
    dtypes = []

    def recording(idx):
        logits = fn(idx)
        dtypes.append(logits.dtype)
        return logits

    bf = hellaswag.score_examples(recording, examples, "cpu", batch_size=3, autocast=autocast)
    assert dtypes == [torch.bfloat16] * 3  # 7 examples in 3 batches, each under autocast
    assert not torch.is_autocast_enabled("cpu")
    assert bf.mean_loss.dtype == torch.float32
    torch.testing.assert_close(bf.mean_loss, ref_mean, atol=0.1, rtol=0.02)
    counts = hellaswag.evaluate(recording, examples, "cpu", batch_size=3, autocast=autocast)
    assert dtypes[3:] == [torch.bfloat16] * 3 and not torch.is_autocast_enabled("cpu")
    assert counts["num_correct_norm"] == (bf.pred_norm == torch.tensor([e.label for e in examples])).sum().item()
    # float32 is no autocast at all
    assert not autocast_and_scaler("cpu", "float32")[0]._enabled
    assert (autocast.device, autocast.fast_dtype) == ("cpu", torch.bfloat16)


def test_checkpoint_native_and_through_huggingface(examples, tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    gpt = GPT(config)
    with torch.no_grad():
        gpt.lm_head.weight[GPT2_VOCAB_SIZE:] *= 500  # if these reached the softmax, the two would differ
    ckpt = str(tmp_path / "model_00010.pt")
    torch.save({"model": gpt.state_dict(), "config": dataclasses.asdict(config)}, ckpt)
    gpt.save_pretrained(str(tmp_path / "hf"))
    native = hellaswag.load_for_eval(ckpt, "cpu")
    hf = hellaswag.load_for_eval(str(tmp_path / "hf"), "cpu")
    assert native.block_size == hf.block_size == 128
    scores = {}
    for name, m in (("native", native), ("hf", hf)):
        scores[name] = hellaswag.score_examples(m.logits_fn, examples, "cpu", batch_size=3)
        # the head path gives the same
        s = hellaswag.score_examples(m.hidden_fn, examples, "cpu", batch_size=3, head=m.head)
        for got, want in zip(s, scores[name]):
            torch.testing.assert_close(got, want)
    a, b = scores["native"], scores["hf"]
    assert torch.equal(a.pred, b.pred) and torch.equal(a.pred_norm, b.pred_norm)
    torch.testing.assert_close(a.sum_loss, b.sum_loss)
    torch.testing.assert_close(a.mean_loss, b.mean_loss)
    # hidden_fn then head is the plain forward of the model that was saved, position by position
    idx = torch.tensor([get_tokenizer().encode_ordinary(examples[0].ctx)])  # (1, T)
    with torch.no_grad():
        want = gpt.eval()(idx)[0]  # (1, T, 50304)
        for m in (native, hf):
            hidden = m.hidden_fn(idx)
            assert hidden.shape == (1, idx.size(1), 32)
            torch.testing.assert_close(m.head(hidden)[..., :GPT2_VOCAB_SIZE], want[..., :GPT2_VOCAB_SIZE])
            torch.testing.assert_close(m.logits_fn(idx)[..., :GPT2_VOCAB_SIZE], want[..., :GPT2_VOCAB_SIZE])
    # the head path left the native model whole: its forward still ends in the vocabulary
    assert native.logits_fn(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 50304)


def test_ranks_split_the_examples(hf_model, examples):
    fn = hf_logits(hf_model)
    whole = hellaswag.evaluate(fn, examples, "cpu")
    parts = [hellaswag.evaluate(fn, examples, "cpu", rank=r, world_size=2, batch_size=2) for r in (0, 1)]
    assert [p["n"] for p in parts] == [4, 3]  # rank 0: examples 0, 2, 4, 6; rank 1: 1, 3, 5
    for key in ("n", "num_correct", "num_correct_norm"):
        assert parts[0][key] + parts[1][key] == whole[key]
    assert parts[1] == hellaswag.evaluate(fn, examples[1::2], "cpu")
    with pytest.raises(ValueError, match="rank 2"):
        hellaswag.evaluate(fn, examples, "cpu", rank=2, world_size=2)


GOOD = official_line(0, EXAMPLES[0])


def replace(line, **fields):
    d = json.loads(line)
    for k, v in fields.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d)


@pytest.mark.parametrize("bad, message", [
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0', "not valid JSON"),
    (replace(GOOD, ctx=None), "missing field 'ctx'"),
    (replace(GOOD, ctx=["not", "a", "string"]), "'ctx' must be a non-empty string"),
    (replace(GOOD, endings=["one", "two", "three"]),
     "'endings' must be a list of exactly 4 strings, found a list of 3"),
    (replace(GOOD, endings=["one", "two", "three", 4]), "'endings'[3] must be a string"),
    (replace(GOOD, label=7), "'label' must be an integer in 0..3, found 7"),
    (replace(GOOD, label="2"), "'label' must be an integer in 0..3, found '2'"),
    ("[1, 2, 3]", "expected a JSON object"),
])
def test_malformed_lines_name_file_and_line(tmp_path, capsys, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(hellaswag.HellaSwagError) as e:
        hellaswag.load_examples(file=path)
    assert isinstance(e.value, UserError) and not isinstance(e.value, hellaswag.DownloadError)
    msg = str(e.value)
    assert f"{path} line 3: " in msg and message in msg
    # the command line says the same in one line, before it loads the model
    with pytest.raises(SystemExit) as e:
        hellaswag.main(["--model", "gpt2", "--file", path])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"hellaswag.py: error: {msg}\n"


def test_unlabeled_data_is_refused_when_scored(hf_model, tmp_path):
    lines = [official_line(i, e, label=False) for i, e in enumerate(EXAMPLES)]
    path = write_jsonl(tmp_path / "hellaswag_test.jsonl", lines)
    examples = hellaswag.load_examples(file=path)  # loading is fine: the test split is like that
    assert all(e.label is None for e in examples)
    with pytest.raises(hellaswag.HellaSwagError, match=re.escape(path) + " line 1: no 'label'.*test split"):
        hellaswag.evaluate(hf_logits(hf_model), examples, "cpu")
    # an official train/val line without its label is a broken line
    with pytest.raises(hellaswag.HellaSwagError, match="line 1: missing field 'label'"):
        hellaswag.read_examples(path, require_label=True)


def test_rows_longer_than_block_size_are_cropped_from_the_left(hf_model, examples):
    """A model with a 48-token context sees the last 48 tokens of each longer row: the context is cut
    from the left, the ending is scored whole."""
    fn = hf_logits(hf_model)
    block_size = 48
    want_sum, want_mean = reference_scores(fn, examples, block_size)
    assert max(hellaswag.row_length(e) for e in examples) > block_size  # some rows are cropped
    s = hellaswag.score_examples(fn, examples, "cpu", batch_size=3, block_size=block_size)
    torch.testing.assert_close(s.sum_loss, want_sum)
    torch.testing.assert_close(s.mean_loss, want_mean)
    one = [hellaswag.score_one_example(fn, e, "cpu", block_size=block_size) for e in examples]
    torch.testing.assert_close(torch.cat([o.mean_loss for o in one]), want_mean)
    counts = hellaswag.evaluate(fn, examples, "cpu", block_size=block_size)
    labels = torch.tensor([e.label for e in examples])
    assert counts["num_correct_norm"] == (want_mean.argmin(1) == labels).sum().item()
    # an ending that leaves no room for a token of context is refused, naming the example
    longest = max(len(end) for e in examples for end in hellaswag.encode(e)[1])
    assert longest == 33 and len(hellaswag.encode(examples[4])[1][1]) == 33  # the tie's second ending
    want = "line 5: ending 1 is 33 tokens, which leaves no room for the context in the model's block_size 33"
    with pytest.raises(hellaswag.HellaSwagError, match=want):
        hellaswag.evaluate(fn, examples, "cpu", block_size=longest)


class FakeResponse:
    """What urllib.request.urlopen returns, serving `data`, optionally failing after `fail_after` bytes."""

    def __init__(self, data, fail_after=None):
        self.data, self.pos, self.fail_after = data, 0, fail_after
        self.headers = {"Content-Length": str(len(data))}

    def read(self, n):
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        chunk = self.data[self.pos : self.pos + min(n, 100)]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_is_atomic_and_cached(monkeypatch, tmp_path, val_file):
    data = open(val_file, "rb").read()
    urls = []

    def urlopen(url, timeout=None, fail_after=None):
        urls.append(url)
        return FakeResponse(data, fail_after)

    cache = tmp_path / "cache" / "hellaswag"
    monkeypatch.setenv("HELLASWAG_CACHE", str(cache))
    # interrupted half way: an error that says what to do, and no file, nor even the folder, left behind
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout=None: urlopen(url, fail_after=300))
    with pytest.raises(hellaswag.DownloadError, match="--file"):
        hellaswag.load_examples("val", progress=False)
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", urlopen)
    examples = hellaswag.load_examples("val", progress=False)
    assert len(examples) == len(EXAMPLES) and examples[0].file == str(cache / "hellaswag_val.jsonl")
    assert urls[-1] == "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
    assert sorted(p.name for p in cache.iterdir()) == ["hellaswag_val.jsonl"]
    assert (cache / "hellaswag_val.jsonl").read_bytes() == data
    hellaswag.load_examples("val", progress=False)
    assert len(urls) == 2  # the second load read the cache
    # a damaged cached file says how to get a good one
    (cache / "hellaswag_val.jsonl").write_text(GOOD + "\n" + GOOD[:50] + "\n")
    with pytest.raises(hellaswag.HellaSwagError, match="line 2: not valid JSON.*delete .*hellaswag_val.jsonl"):
        hellaswag.load_examples("val", progress=False)


@contextlib.contextmanager
def closed_port():
    """A local port that refuses connections: bound, so that nothing else takes it, but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def silent_server():
    """A local port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock.getsockname()[1]


def test_file_errors_and_download_errors_are_told_apart(monkeypatch, tmp_path):
    """train_gpt2.py goes on without HellaSwag only when the download fails (DownloadError); a
    --hellaswag_file that is missing, a folder, empty or malformed is a HellaSwagError, which
    stops it. Both are UserErrors, one line to the user."""
    monkeypatch.setenv("HELLASWAG_CACHE", str(tmp_path / "cache"))
    bad_files = {"missing": str(tmp_path / "nope.jsonl"), "folder": str(tmp_path),
                 "empty": write_jsonl(tmp_path / "empty.jsonl", []),
                 "malformed": write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD[:40]])}
    messages = {"missing": "nope.jsonl does not exist", "folder": "cannot read it", "empty": "no examples",
                "malformed": "bad.jsonl line 2: not valid JSON"}
    for kind, file in bad_files.items():
        with pytest.raises(hellaswag.HellaSwagError, match=messages[kind]) as e:
            hellaswag.load_examples("val", file=file, progress=False)
        assert isinstance(e.value, UserError) and not isinstance(e.value, hellaswag.DownloadError)
    with closed_port() as port:
        monkeypatch.setattr(hellaswag, "DATA_URL", f"http://127.0.0.1:{port}/hellaswag_{{split}}.jsonl")
        with pytest.raises(hellaswag.DownloadError) as e:
            hellaswag.load_examples("val", progress=False)
    assert isinstance(e.value, UserError) and not isinstance(e.value, hellaswag.HellaSwagError)
    assert e.value.url == f"http://127.0.0.1:{port}/hellaswag_val.jsonl" and "refused" in e.value.reason
    assert "--hellaswag_file" in str(e.value)
    # a server that never answers costs the timeout, not a hang
    with silent_server() as port:
        monkeypatch.setattr(hellaswag, "DATA_URL", f"http://127.0.0.1:{port}/hellaswag_{{split}}.jsonl")
        with pytest.raises(hellaswag.DownloadError, match="timed out"):
            hellaswag.load_examples("val", progress=False, timeout=0.2)
    assert not (tmp_path / "cache").exists()


def test_command_line_end_to_end(hf_model, hf_dir, val_file, examples, tmp_path, capsys):
    out = tmp_path / "results" / "results.json"
    ret = hellaswag.main(["--model", hf_dir, "--file", val_file, "--limit", "5", "--batch_size", "2",
                          "--device", "cpu", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results == ret
    want = hellaswag.evaluate(hf_logits(hf_model), examples[:5], "cpu")
    for key in ("acc", "acc_norm", "n", "num_correct", "num_correct_norm"):
        assert results[key] == want[key], key
    assert results["n"] == 5
    assert (results["model"], results["file"], results["dtype"], results["limit"]) == (hf_dir, val_file, "float32", 5)
    summary = capsys.readouterr().out
    assert f"acc_norm {want['acc_norm']:.4f}" in summary and "5 examples" in summary
    # the benchmark runs on the same model and data, and its methods agree
    r = hellaswag.main(["--model", hf_dir, "--file", val_file, "--limit", "4", "--batch_size", "2",
                        "--device", "cpu", "--benchmark"])
    assert r["n"] == 4 and r["batched_same_pred"] == r["batched_same_pred_norm"] == 4
    assert r["batched_full_logits_same_pred_norm"] == 4 and r["ratio"] > 0
    assert "examples/s" in capsys.readouterr().out


def test_progress_bar_with_tqdm_disabled(tmp_path, val_file, examples):
    """TQDM_DISABLE=1, a documented tqdm setting, leaves the bar's count at 0: the running acc_norm
    divides by our own count. tqdm reads the variable when it is imported, hence a new process."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=128, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)
    gpt = GPT(config).eval()
    ckpt = str(tmp_path / "model.pt")
    torch.save({"model": gpt.state_dict(), "config": dataclasses.asdict(config)}, ckpt)
    env = dict(os.environ, TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, "hellaswag.py", "--model", ckpt, "--file", val_file, "--device", "cpu",
                        "--batch_size", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HellaSwag" not in r.stderr  # no bar
    want = hellaswag.evaluate(lambda idx: gpt(idx)[0], examples, "cpu")
    assert f"| acc_norm {want['acc_norm']:.4f} |" in r.stdout


def test_help_gives_every_default():
    p = hellaswag.get_parser()
    text = p.format_help()
    helps = []
    for action in p._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, action.option_strings
        helps.append(action.help)
        if action.default not in (None, False):
            assert f"(default: {action.default})" in " ".join(text.split()), action.option_strings
    assert len(set(helps)) == len(helps)  # no help string copied from another flag


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, as in this project's sandbox but the same on any machine: the HellaSwag download
    goes to a closed local port, the Hugging Face hub is offline with an empty cache."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HELLASWAG_CACHE", str(tmp_path / "cache" / "hellaswag"))
    with closed_port() as port:
        monkeypatch.setattr(hellaswag, "DATA_URL", f"http://127.0.0.1:{port}/hellaswag_{{split}}.jsonl")
        yield


@pytest.fixture
def paths(tmp_path, val_file, hf_dir):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "broken_hf").mkdir()
    (tmp_path / "broken_hf" / "config.json").write_text("{not json")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    return dict(
        good=val_file, hf=hf_dir, folder=str(tmp_path), missing=str(tmp_path / "nope.jsonl"),
        empty=write_jsonl(tmp_path / "empty.jsonl", []),
        malformed=write_jsonl(tmp_path / "bad.jsonl", [GOOD, replace(GOOD, label=7)]),
        unlabeled=write_jsonl(tmp_path / "test.jsonl", [official_line(0, EXAMPLES[0], label=False)]),
        no_model=str(tmp_path / "no_such_model"), no_config=str(tmp_path / "empty_dir"),
        not_ckpt=str(tmp_path / "model.pt"), broken_hf=str(tmp_path / "broken_hf"),
    )


# (argv, what the error line says); {name} is one of the paths above. Each is a user's mistake:
# exit status 2, one line on stderr (argparse's own errors too), no traceback
BAD_INVOCATIONS = [
    ([], "could not download the HellaSwag val split from http://127.0.0.1:"),  # offline, all defaults
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--batch_size", "-4"], "--batch_size must be >= 1, got -4"),
    (["--benchmark", "--benchmark_rounds", "0"], "--benchmark_rounds must be >= 1, got 0"),
    (["--limit", "ten"], "argument --limit: invalid int value: 'ten'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--split", "test"], "argument --split: invalid choice: 'test'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--file", "{missing}"], "--file {missing} does not exist; give the path of a HellaSwag JSONL file"),
    (["--file", "{folder}"], "--file {folder} is a directory"),
    (["--file", "{empty}"], "{empty}: no examples (the file is empty)"),
    (["--file", "{malformed}"], "{malformed} line 2: 'label' must be an integer in 0..3, found 7"),
    (["--file", "{good}"], "--model gpt2 is fetched from the Hugging Face hub, which could not be reached"),
    (["--model", "{hf}"], "could not download the HellaSwag val split"),
    (["--model", "{no_model}", "--file", "{good}"], "--model {no_model} is neither one of gpt2"),
    (["--model", "{no_config}", "--file", "{good}"], "--model {no_config} is a directory without config.json"),
    (["--model", "{not_ckpt}", "--file", "{good}", "--device", "cpu"],
     "--model {not_ckpt}: could not load it as a train_gpt2.py checkpoint (torch.load cannot read it"),
    (["--model", "{broken_hf}", "--file", "{good}", "--device", "cpu"],
     "--model {broken_hf}: could not load it as a Hugging Face GPT-2 directory"),
    (["--model", "{hf}", "--file", "{unlabeled}", "--device", "cpu"], "{unlabeled} line 1: no 'label'"),
    (["--file", "{good}", "--device", "cuda:99"], "--device cuda:99: this machine has no CUDA GPU"),
    (["--file", "{good}", "--device", "tpu"], "--device tpu: expected auto, cuda, cuda:N, mps or cpu"),
    (["--file", "{good}", "--out", "{folder}"], "--out {folder} is a directory"),
]


@pytest.mark.parametrize("argv, message", BAD_INVOCATIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_invocations_are_one_line(offline, paths, tmp_path, capsys, argv, message):
    argv = [a.format(**paths) for a in argv]
    with pytest.raises(SystemExit) as e:
        hellaswag.main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hellaswag.py: error: "), captured.err
    assert message.format(**paths) in lines[0]
    assert not (tmp_path / "cache").exists()  # a failed download leaves no folder behind
    if argv in ([], ["--model", paths["hf"]]):
        # offline, all that needs the network is named, with what to use instead
        assert "pass a local hellaswag_val.jsonl with --file" in lines[0]
        assert ("--model gpt2 would be fetched from the Hugging Face hub too" in lines[0]) == (argv == [])


def test_user_error_from_the_script_itself(tmp_path):
    """python hellaswag.py as a user runs it: exit status 2, one line on stderr."""
    missing = str(tmp_path / "nope.jsonl")
    r = subprocess.run([sys.executable, "hellaswag.py", "--file", missing], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"hellaswag.py: error: --file {missing}")
