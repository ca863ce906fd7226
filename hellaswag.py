"""
HellaSwag accuracy of a GPT-2: OpenAI's checkpoints or any local Hugging Face GPT-2 directory
(through transformers.GPT2LMHeadModel, the reference baseline), or one of our train_gpt2.py
checkpoints (through model.py's GPT).

    python hellaswag.py --model gpt2                        # OpenAI's 124M on the 10,042 val examples
    python hellaswag.py --model gpt2-xl --device cuda --out gpt2-xl.json
    python hellaswag.py --model log/model_19073.pt --dtype bfloat16
    python hellaswag.py --model path/to/hf_dir --file hellaswag_val.jsonl --limit 500
    python hellaswag.py --model gpt2 --limit 200 --benchmark   # batched scorer vs one example per forward

The data are the official JSONL files (Zellers et al. 2019, https://github.com/rowanz/hellaswag),
downloaded on first use into hellaswag/ beside this file (or $HELLASWAG_CACHE), or a local --file;
offline, give both --file and a local --model. build-nanogpt's completion-style method: each
candidate row is tokens(ctx) + tokens(" " + ending), scored by the cross-entropy of the ending's
tokens over GPT-2's 50257 real tokens; acc takes the lowest sum, acc_norm the lowest mean per token.
A row longer than the model's block_size keeps its last block_size tokens. One scorer, `evaluate`,
serves this script and train_gpt2.py's evaluation (which splits the examples over ranks).

    model                    acc      acc_norm   source
    GPT-2 124M  (gpt2)       0.2859   0.2955     build-nanogpt's hellaswag.py (float32, transformers)
    GPT-2 1558M (gpt2-xl)    0.3842   0.4893     build-nanogpt's hellaswag.py (float32, transformers)
    GPT-3 Small (125M)         -      0.337      GPT-3 paper (arXiv:2005.14165), zero-shot, OpenAI's
                                                 own length-normalised scoring: compare with acc_norm
"""

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import NamedTuple

from common import ArgumentParser, UserError, check_writable, exit_on_user_error, write_atomic

DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
SPLITS = ("train", "val", "test")
NUM_ENDINGS = 4
# examples per forward (4 rows each). On a GPU more is faster. On a CPU a 124M model gains nothing
# from big batches: its matmuls are as efficient with 4 examples per forward as with 16, and the
# bigger activations fall out of the caches (16 measured 1.5x slower than 4); tiny models still gain
BATCH_SIZE = 16
CPU_BATCH_SIZE = 4
# the padded length of a batch is a multiple of this, so a torch.compile(dynamic=True) model sees a
# handful of shapes over the whole set instead of one per length. This script runs its models
# eagerly, where any shape costs the same, so it pads to the longest row only (1.2x faster on CPU)
PAD_MULTIPLE = 32
# the context length assumed when a caller does not give the model's: GPT-2's
DEFAULT_BLOCK_SIZE = 1024
# seconds that the download waits for the server to answer, and then for each block of data: a
# machine without a network fails at once (no DNS), one behind a firewall that drops packets would
# otherwise wait minutes
DOWNLOAD_TIMEOUT = 30


# --help: what the script does and how it is called; the method is the module's docstring above
USAGE = """\
HellaSwag acc and acc_norm (Zellers et al. 2019) of OpenAI's GPT-2, a local Hugging Face GPT-2
directory or a train_gpt2.py checkpoint, with the scorer train_gpt2.py uses. The val split is
downloaded on first use. The method: hellaswag.py's docstring and the README.

    python hellaswag.py --model gpt2                          # OpenAI's 124M, all 10,042 val examples
    python hellaswag.py --model log/model_19073.pt --dtype bfloat16
    python hellaswag.py --model path/to/hf_dir --file hellaswag_val.jsonl --limit 500   # offline
"""


def get_parser():
    p = ArgumentParser("hellaswag.py", description=USAGE)
    a = p.add_argument
    a("--model", default="gpt2",
      help="gpt2|gpt2-medium|gpt2-large|gpt2-xl (OpenAI's, from the Hugging Face hub) or a local Hugging Face GPT-2 directory, "
           "both through transformers, or a train_gpt2.py checkpoint file .pt, through model.py "
           "(default: %(default)s)")
    a("--split", choices=["val", "train"], default="val",
      help="the official split to download and score; the test split has no labels, so it cannot be scored "
           "(default: %(default)s)")
    a("--file", default=None,
      help="a local HellaSwag JSONL file in the official format, scored instead of the download (default: none: "
           "download --split into $HELLASWAG_CACHE, or hellaswag/ beside this script)")
    a("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available, in that order)")
    a("--dtype", choices=["float32", "bfloat16"], default="float32",
      help="float32, or bfloat16 autocast around the forward; the losses are float32 either way "
           "(default: %(default)s)")
    a("--limit", type=int, default=None, help="score only the first N examples (default: all; with --benchmark, 100)")
    a("--batch_size", type=int, default=None,
      help=f"examples per forward, 4 rows each (default: {BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on a CPU)")
    a("--out", default=None, help="also write the results to this JSON file (default: none, print them only)")
    a("--benchmark", action="store_true",
      help="instead of scoring, time the batched scorer against one example per forward on the first --limit "
           "examples (default: %(default)s)")
    a("--benchmark_rounds", type=int, default=1,
      help="timed runs of each method in --benchmark; the best is reported (default: %(default)s)")
    return p


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    # --help at once, not after the seconds that importing torch takes on a busy machine
    exit_on_user_error("hellaswag.py", get_parser().parse_args)

import torch
from torch.nn import functional as F

from checkpoint import check_source, load_error, load_model
from device import autocast_and_scaler, resolve_device
from model import is_hub_name, load_hf_gpt2
from tokenizer import GPT2_EOT, GPT2_VOCAB_SIZE, get_tokenizer


# Two kinds of user error, kept apart so that train_gpt2.py can go on without HellaSwag when the
# download fails (no network) but stops at start-up on a --hellaswag_file that is missing or broken


class HellaSwagError(UserError):
    """A HellaSwag file that is missing, unreadable or not in the official format, or examples
    that cannot be scored as asked."""


class DownloadError(UserError):
    """The official file could not be downloaded (no network, server error). url and reason let a
    caller say it its own way."""

    def __init__(self, message, url=None, reason=None):
        super().__init__(message)
        self.url, self.reason = url, reason


# -----------------------------------------------------------------------------
# data: the official JSONL files, checked line by line


@dataclass
class Example:
    ctx: str
    endings: list
    label: object  # int in 0..3, or None for unlabeled (test split) data
    file: str
    line: int  # 1-based line number in file
    index: int  # 0-based position among the file's examples
    # (context tokens, [ending tokens] * 4), filled by encode() on first use
    tokens: tuple = field(default=None, repr=False, compare=False)

    @property
    def where(self):
        return f"{self.file} line {self.line}"


def _short(value, n=60):
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def parse_line(text, file, line, index, require_label=False):
    """One line of an official HellaSwag file as an Example; HellaSwagError naming the file and
    line if it is not in the official format."""

    def bad(problem):
        return HellaSwagError(f"{file} line {line}: {problem}")

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object with 'ctx', 'endings' and 'label', found {type(obj).__name__}")
    for key in ("ctx", "endings"):
        if key not in obj:
            raise bad(f"missing field {key!r} (fields found: {', '.join(sorted(obj)) or 'none'})")
    ctx, endings = obj["ctx"], obj["endings"]
    if not isinstance(ctx, str) or not ctx:
        # an empty context leaves nothing to predict the first ending token from
        raise bad(f"'ctx' must be a non-empty string, found {_short(ctx)}")
    if not isinstance(endings, list) or len(endings) != NUM_ENDINGS:
        found = f"a list of {len(endings)}" if isinstance(endings, list) else _short(endings)
        raise bad(f"'endings' must be a list of exactly {NUM_ENDINGS} strings, found {found}")
    for j, ending in enumerate(endings):
        if not isinstance(ending, str):
            raise bad(f"'endings'[{j}] must be a string, found {_short(ending)}")
    label = obj.get("label")
    if label is None:
        if require_label:
            raise bad("missing field 'label'; this split's lines all have one")
    elif isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_ENDINGS:
        raise bad(f"'label' must be an integer in 0..{NUM_ENDINGS - 1}, found {_short(label)}")
    return Example(ctx=ctx, endings=list(endings), label=label, file=file, line=line, index=index)


def read_examples(path, limit=None, require_label=False):
    """The examples of a HellaSwag JSONL file (the first `limit` if given), each line checked.
    Blank lines are skipped."""
    examples = []
    try:
        f = open(path, "rb")
    except OSError as e:  # a folder, no permission
        raise HellaSwagError(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        for line_no, raw in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise HellaSwagError(f"{path} line {line_no}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if text.strip():
                examples.append(parse_line(text, path, line_no, len(examples), require_label))
    if not examples and limit != 0:
        raise HellaSwagError(f"{path}: no examples (the file is empty)")
    return examples


def download(split, cache=None, progress=True, timeout=DOWNLOAD_TIMEOUT):
    """Path of the official hellaswag_{split}.jsonl in the cache folder, downloaded first if absent.
    The cache folder is made and the file written (write_atomic) only once the whole file has
    arrived, so a failed download leaves nothing behind, not even an empty folder. DownloadError if
    the file cannot be fetched."""
    from tqdm import tqdm

    if split not in SPLITS:
        raise ValueError(f"HellaSwag split {split!r}: expected one of {', '.join(SPLITS)}")
    cache = cache or os.environ.get("HELLASWAG_CACHE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")
    path = os.path.join(cache, f"hellaswag_{split}.jsonl")
    if os.path.isfile(path):
        return path
    url = DATA_URL.format(split=split)
    try:
        # in memory first (the val file is 11 MB, train 47 MB)
        data = bytearray()
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(path)}",
                      disable=not progress) as bar:
                while chunk := response.read(1 << 16):
                    data += chunk
                    bar.update(len(chunk))
        if total is not None and len(data) != total:
            raise ConnectionError(f"the server announced {total} bytes but sent {len(data)}")
    except (OSError, ValueError) as e:  # URLError, HTTPError, socket timeouts and resets are OSErrors
        reason = str(e) if isinstance(e, urllib.error.HTTPError) else str(getattr(e, "reason", None) or e)
        raise DownloadError(
            f"{_could_not_download(split, url, reason)}; without a network, get hellaswag_{split}.jsonl another way "
            f"and pass it as a local file (hellaswag.py --file, train_gpt2.py --hellaswag_file)", url=url, reason=reason,
        ) from e
    try:
        write_atomic(path, data)
    except OSError as e:
        raise HellaSwagError(
            f"could not write the downloaded {os.path.basename(path)} into {cache} ({e.strerror}); set "
            f"$HELLASWAG_CACHE to a writable folder"
        ) from None
    return path


def _could_not_download(split, url, reason):
    return f"could not download the HellaSwag {split} split from {url} ({reason})"


def load_examples(split="val", file=None, limit=None, cache=None, progress=True, timeout=DOWNLOAD_TIMEOUT):
    """HellaSwag examples: the official `split` (downloaded into the cache on first use), or the
    local JSONL `file` instead. limit: only the first `limit` examples.
    A file that is missing, unreadable or not in the official format is a HellaSwagError; a failed
    download (no network) is a DownloadError. Both are UserErrors, and only the second means that
    the data could not be had at all."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if file is not None:
        if not os.path.exists(file):
            raise HellaSwagError(
                f"HellaSwag file {file} does not exist; give the path of a hellaswag_{{split}}.jsonl in the "
                f"official format, or no file to download the official one from {DATA_URL.format(split=split)}"
            )
        path, require_label = file, False
        hint = "give a HellaSwag JSONL file in the official format (https://github.com/rowanz/hellaswag)"
    else:
        path, require_label = download(split, cache, progress, timeout), split != "test"
        hint = f"the cached download is damaged: delete {path} and run again to download it anew"
    try:
        return read_examples(path, limit, require_label)
    except HellaSwagError as e:  # the file's problem, then what to do about it
        raise HellaSwagError(f"{e}; {hint}") from None


# -----------------------------------------------------------------------------
# scoring: the ending's cross-entropy under the model, batched


class Scores(NamedTuple):
    sum_loss: torch.Tensor  # (n, 4): summed cross-entropy of each ending's tokens
    mean_loss: torch.Tensor  # (n, 4): the same divided by the ending's number of tokens
    pred: torch.Tensor  # (n,): the ending of lowest sum_loss (acc)
    pred_norm: torch.Tensor  # (n,): the ending of lowest mean_loss (acc_norm)


def encode(example):
    """(context tokens, [ending tokens] * 4) of an example, cached on it. Each ending is encoded with
    a leading space, as it continues the context's last word."""
    if example.tokens is None:
        enc = get_tokenizer()
        ctx = enc.encode_ordinary(example.ctx)
        endings = [enc.encode_ordinary(" " + ending) for ending in example.endings]
        example.tokens = (ctx, endings)
    return example.tokens


def row_length(example):
    """Tokens in the longest of the example's 4 candidate rows, uncropped."""
    ctx, endings = encode(example)
    return len(ctx) + max(len(e) for e in endings)


def candidate_rows(example, block_size=None):
    """The example's 4 rows as (tokens, number of context tokens). A row longer than block_size
    keeps its last block_size tokens: the context is cut from the left, the ending stays whole."""
    ctx, endings = encode(example)
    rows = []
    for ending in endings:
        row, n_ctx = ctx + ending, len(ctx)
        if block_size is not None and len(row) > block_size:
            cut = len(row) - block_size
            row, n_ctx = row[cut:], n_ctx - cut
        rows.append((row, n_ctx))
    return rows


def check_lengths(examples, block_size):
    """Every ending fits in block_size after at least one context token (which predicts its first
    token); the context itself may be cropped."""
    for ex in examples:
        _, endings = encode(ex)
        for j, ending in enumerate(endings):
            if len(ending) + 1 > block_size:
                raise HellaSwagError(
                    f"{ex.where}: ending {j} is {len(ending)} tokens, which leaves no room for the context "
                    f"in the model's block_size {block_size}: use a model with a longer context, or leave "
                    f"this example out"
                )


def check_labels(examples):
    """Every example has its label, which scoring needs."""
    for ex in examples:
        if ex.label is None:
            raise HellaSwagError(
                f"{ex.where}: no 'label'; scoring needs the correct ending of every example, and the test "
                f"split's labels are not published: score the val (or train) split"
            )


@torch.no_grad()
def score_batch(logits_fn, examples, device, rows=None, pad_multiple=1, block_size=None,
                autocast=contextlib.nullcontext(), head=None):
    """Scores of a few examples in one forward of `rows` rows (default 4 per example; the rows past
    the examples' are dummy rows, scored and discarded, so that every batch has one shape). The
    length is the longest row rounded up to a multiple of pad_multiple, capped at block_size (rows
    longer than block_size are cropped from the left: see candidate_rows).
    Padding is <|endoftext|> after each row's end: attention is causal, so it never changes the
    logits of a real position, and it is masked out of the losses.

    logits_fn maps token ids (rows, T) to logits (rows, T, V). With head given, it maps them to the
    hidden states before the vocabulary projection instead (rows, T, n_embd), and head projects
    the ones a loss is taken at (M, n_embd) -> (M, V): the same logits, without computing (and
    storing) the vocabulary projection of every context and padding position.

    autocast is a context manager entered around the forward and head, such as
    torch.autocast("cuda", dtype=torch.bfloat16); the losses are float32 either way."""
    n = len(examples)
    rows = NUM_ENDINGS * n if rows is None else rows
    if n == 0 or rows < NUM_ENDINGS * n:
        raise ValueError(f"score_batch needs 1 or more examples and rows >= 4 * examples, got {n} and {rows}")
    if block_size is not None:
        check_lengths(examples, block_size)
    candidates = [candidate_rows(ex, block_size) for ex in examples]
    T = max(len(row) for rows_of_ex in candidates for row, _ in rows_of_ex)
    T = -(-T // pad_multiple) * pad_multiple
    if block_size is not None:
        T = min(T, block_size)
    idx = torch.full((rows, T), GPT2_EOT, dtype=torch.long)
    is_ending = torch.zeros((rows, T), dtype=torch.bool)  # the positions of ending tokens
    for i, rows_of_ex in enumerate(candidates):
        for j, (row, n_ctx) in enumerate(rows_of_ex):
            r = NUM_ENDINGS * i + j
            idx[r, : len(row)] = torch.tensor(row)
            is_ending[r, n_ctx : len(row)] = True
    idx = idx.to(device)
    # the logits at position t predict token t + 1: a loss wherever token t + 1 is an ending token,
    # and only those positions are kept (the context's predictions are never needed)
    target_mask = is_ending[:, 1:].to(device)  # (rows, T - 1)
    with autocast:
        out = logits_fn(idx)  # (rows, T, V), or (rows, T, n_embd) with head
        out = out[:, :-1][target_mask]  # (M, V) or (M, n_embd); M = ending tokens in the batch
        if head is not None:
            out = head(out)  # (M, V)
    # float32 over the real vocabulary only: the padding rows of a 50304 vocabulary must not take
    # probability mass
    pred_logits = out[:, : min(out.size(-1), GPT2_VOCAB_SIZE)].float()  # (M, 50257)
    targets = idx[:, 1:][target_mask]  # (M,)
    token_loss = F.cross_entropy(pred_logits, targets, reduction="none")  # (M,)
    row_of = torch.arange(rows, device=idx.device).unsqueeze(1).expand(rows, T - 1)[target_mask]  # (M,)
    sum_loss = torch.zeros(rows, device=idx.device).index_add_(0, row_of, token_loss)  # (rows,)
    sum_loss = sum_loss[: NUM_ENDINGS * n].view(n, NUM_ENDINGS)  # (n, 4); dummy rows dropped
    num_tokens = target_mask.sum(1)[: NUM_ENDINGS * n].view(n, NUM_ENDINGS)  # (n, 4)
    mean_loss = sum_loss / num_tokens
    sum_loss, mean_loss = sum_loss.cpu(), mean_loss.cpu()
    # argmin takes the first of equal losses
    return Scores(sum_loss, mean_loss, sum_loss.argmin(1), mean_loss.argmin(1))


def score_examples(logits_fn, examples, device, batch_size=BATCH_SIZE, block_size=None, pad_multiple=PAD_MULTIPLE,
                   autocast=contextlib.nullcontext(), head=None, on_batch=None):
    """Scores of all examples (in their order), batch_size examples per forward. Batches are made
    of examples of similar length (sorted, longest first, so that an out-of-memory shows at once),
    which keeps the padding small; every batch has batch_size * 4 rows (fewer examples than
    batch_size: 4 per example). on_batch(examples, scores) is called after each batch. autocast is
    entered once per batch (a torch.autocast object can be entered again after it is exited)."""
    n = len(examples)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    block_size = block_size or DEFAULT_BLOCK_SIZE
    check_lengths(examples, block_size)
    sum_loss, mean_loss = torch.zeros(n, NUM_ENDINGS), torch.zeros(n, NUM_ENDINGS)
    pred, pred_norm = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    per_batch = max(1, min(batch_size, n))
    order = sorted(range(n), key=lambda i: row_length(examples[i]), reverse=True)
    for start in range(0, n, per_batch):
        ids = order[start : start + per_batch]
        batch = [examples[i] for i in ids]
        s = score_batch(logits_fn, batch, device, rows=NUM_ENDINGS * per_batch, pad_multiple=pad_multiple,
                        block_size=block_size, autocast=autocast, head=head)
        where = torch.tensor(ids)
        sum_loss[where], mean_loss[where], pred[where], pred_norm[where] = s
        if on_batch is not None:
            on_batch(batch, s)
    return Scores(sum_loss, mean_loss, pred, pred_norm)


def evaluate(logits_fn, examples, device, rank=0, world_size=1, autocast=contextlib.nullcontext(),
             batch_size=BATCH_SIZE, block_size=None, head=None, pad_multiple=PAD_MULTIPLE, progress=False):
    """HellaSwag counts of the examples this rank scores: examples rank, rank + world_size, ...
    (the caller sums the counts over ranks). logits_fn maps token ids (N, T) on device to logits
    (N, T, V) (or to hidden states, with head: see score_batch). autocast is a context manager
    entered around each forward, e.g. the training run's torch.autocast(device_type,
    dtype=torch.bfloat16); call evaluate outside any `with` of that same object, which
    torch.autocast does not allow to nest (its exit would restore the state of the inner entry,
    leaving autocast on). block_size is the model's context length (default 1024, GPT-2's); give
    it for a model with a shorter one, whose longer rows are then cropped from the left rather
    than refused by the model's forward. Returns n, num_correct, num_correct_norm, acc, acc_norm."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size {world_size})")
    mine = examples[rank::world_size]
    check_labels(mine)
    counts = {"n": len(mine), "num_correct": 0, "num_correct_norm": 0}
    scored = 0  # our own count: with TQDM_DISABLE=1 in the environment, tqdm leaves bar.n at 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), unit="ex", desc="HellaSwag")

    def count(batch, s):
        nonlocal scored
        labels = torch.tensor([ex.label for ex in batch])
        counts["num_correct"] += (s.pred == labels).sum().item()
        counts["num_correct_norm"] += (s.pred_norm == labels).sum().item()
        scored += len(batch)
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(acc_norm=f"{counts['num_correct_norm'] / scored:.4f}")

    try:
        score_examples(logits_fn, mine, device, batch_size=batch_size, block_size=block_size, pad_multiple=pad_multiple,
                       autocast=autocast, head=head, on_batch=count)
    finally:
        if bar is not None:
            bar.close()
    n = counts["n"]
    counts["acc"] = counts["num_correct"] / n if n else float("nan")
    counts["acc_norm"] = counts["num_correct_norm"] / n if n else float("nan")
    return counts


# -----------------------------------------------------------------------------
# models: Hugging Face transformers (the reference) or our checkpoints


class EvalModel(NamedTuple):
    logits_fn: object  # token ids (N, T) -> logits (N, T, V): the model's plain forward
    hidden_fn: object  # token ids (N, T) -> hidden states before the vocabulary projection (N, T, n_embd)
    head: object  # hidden states (M, n_embd) -> logits (M, V)
    block_size: int


def hub_model_needs_network(name):
    """Whether --model is a GPT-2 name that transformers must fetch from the Hugging Face hub:
    not already in the local Hugging Face cache."""
    if not is_hub_name(name):
        return False
    from huggingface_hub import try_to_load_from_cache

    return not isinstance(try_to_load_from_cache(name, "config.json"), str)


def load_for_eval(name_or_path, device):
    """--model as an EvalModel: a train_gpt2.py checkpoint file through model.py's GPT; anything
    else (a GPT-2 name or a Hugging Face directory) through transformers' GPT2LMHeadModel, in
    float32 (--dtype bfloat16 is autocast around the forward). A UserError, naming --model and
    what to give instead, if it cannot be loaded."""
    if os.path.isfile(name_or_path):
        gpt = load_model(name_or_path, device)
        # the model's own option stops its forward after ln_f, so that lm_head projects only the
        # positions a loss is taken at
        return EvalModel(lambda idx: gpt(idx)[0], lambda idx: gpt(idx, return_hidden=True)[0], gpt.lm_head,
                         gpt.config.block_size)
    try:
        hf = load_hf_gpt2(name_or_path)
    except Exception as e:  # no network, or a broken config.json or weights file
        raise load_error("--model", name_or_path, e) from e
    hf = hf.to(device=device, dtype=torch.float32).eval()
    return EvalModel(
        lambda idx: hf(idx, use_cache=False).logits,
        lambda idx: hf.transformer(idx, use_cache=False).last_hidden_state,
        hf.lm_head,
        hf.config.n_positions,
    )


# -----------------------------------------------------------------------------
# benchmark: the batched scorer against build-nanogpt's loop, one example per forward


@torch.no_grad()
def score_one_example(logits_fn, example, device, autocast=contextlib.nullcontext(), block_size=None):
    """build-nanogpt's way, one example at a time: its 4 rows in one forward, padded only to its
    own longest row, the loss of every position computed and then masked to the ending's. Written
    apart from score_batch (but for the rows themselves), so that the benchmark cross-checks the two."""
    candidates = candidate_rows(example, block_size)
    T = max(len(row) for row, _ in candidates)
    tokens = torch.full((NUM_ENDINGS, T), GPT2_EOT, dtype=torch.long)
    mask = torch.zeros((NUM_ENDINGS, T))
    for j, (row, n_ctx) in enumerate(candidates):
        tokens[j, : len(row)] = torch.tensor(row)
        mask[j, n_ctx : len(row)] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast:
        logits = logits_fn(tokens)  # (4, T, V)
    logits = logits[:, :-1, :GPT2_VOCAB_SIZE].float()  # (4, T - 1, 50257): position t predicts token t + 1
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), reduction="none")
    losses = losses.view(NUM_ENDINGS, T - 1) * mask[:, 1:]  # (4, T - 1)
    sum_loss = losses.sum(1).view(1, NUM_ENDINGS).cpu()  # (1, 4)
    mean_loss = sum_loss / mask[:, 1:].sum(1).view(1, NUM_ENDINGS).cpu()  # (1, 4)
    return Scores(sum_loss, mean_loss, sum_loss.argmin(1), mean_loss.argmin(1))


def benchmark(model, examples, device, batch_size=BATCH_SIZE, autocast=contextlib.nullcontext(), rounds=1):
    """Examples/s, best of `rounds`, of: the batched scorer as this script runs it (batch_size
    examples per forward, the vocabulary projection only where a loss is taken, no padding past a
    batch's longest row); the same as train_gpt2.py calls it (from full logits, lengths padded to a
    multiple of 32); and build-nanogpt's loop (score_one_example). Also how far their losses and
    predictions agree."""
    kw = dict(block_size=model.block_size, autocast=autocast)

    def one_at_a_time(xs):
        scores = [score_one_example(model.logits_fn, ex, device, autocast, model.block_size) for ex in xs]
        return Scores(*(torch.cat(parts) for parts in zip(*scores)))  # (1, 4) and (1,) each -> (n, 4), (n,)

    methods = {
        "batched": lambda xs: score_examples(model.hidden_fn, xs, device, batch_size, head=model.head,
                                             pad_multiple=1, **kw),
        "batched_full_logits": lambda xs: score_examples(model.logits_fn, xs, device, batch_size, **kw),
        "one_at_a_time": one_at_a_time,
    }
    times = {name: [] for name in methods}
    results = {}
    for fn in methods.values():
        fn(examples[:batch_size])  # warm-up, not timed: first calls pay for allocations and kernel choice
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            results[name] = fn(examples)
            times[name].append(time.perf_counter() - t0)
    r = {"n": len(examples), "batch_size": batch_size, "rounds": rounds}
    for name, t in times.items():
        r[f"{name}_ex_s"] = len(examples) / min(t)
    r["ratio"] = r["batched_ex_s"] / r["one_at_a_time_ex_s"]
    ref = results["one_at_a_time"]
    for name in ("batched", "batched_full_logits"):
        s = results[name]
        r[f"{name}_same_pred"] = int((s.pred == ref.pred).sum())
        r[f"{name}_same_pred_norm"] = int((s.pred_norm == ref.pred_norm).sum())
        r[f"{name}_max_diff_mean_loss"] = (s.mean_loss - ref.mean_loss).abs().max().item()
    return r


# -----------------------------------------------------------------------------
# command line


def check_args(args):
    """Validate the flags once, before anything is loaded: UserErrors that name the flag."""
    for flag in ("limit", "batch_size", "benchmark_rounds"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UserError(f"--{flag} must be >= 1, got {v}")
    if args.file is not None and not os.path.isfile(args.file):
        what = "is a directory" if os.path.isdir(args.file) else "does not exist"
        raise UserError(f"--file {args.file} {what}; give the path of a HellaSwag JSONL file (hellaswag_val.jsonl), "
                        f"or leave --file out to download the official --split {args.split}")
    check_source(args.model)
    args.device = resolve_device(args.device or "auto")
    if args.out is not None and os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a directory; give a file name, such as "
                        f"{os.path.join(args.out, 'hellaswag.json')}")
    if args.out is not None:
        check_writable(args.out, "--out")  # before the evaluation, not after it
    if args.benchmark and args.limit is None:
        args.limit = 100
    return args


def run(args):
    """hellaswag.py with parsed flags: the cheap checks and loads first (flags, data, then the
    model), so that a mistake shows before a model is fetched."""
    check_args(args)
    device = args.device
    if args.batch_size is None:
        args.batch_size = CPU_BATCH_SIZE if torch.device(device).type == "cpu" else BATCH_SIZE
    try:
        examples = load_examples(args.split, file=args.file, limit=args.limit)
    except DownloadError as e:
        # offline, the default run needs the network twice: say both at once
        hub = hub_model_needs_network(args.model)
        raise DownloadError(
            _could_not_download(args.split, e.url, e.reason)
            + (f", and --model {args.model} would be fetched from the Hugging Face hub too" if hub else "")
            + f"; without a network, pass a local hellaswag_{args.split}.jsonl with --file"
            + (", and a local Hugging Face GPT-2 directory or a train_gpt2.py checkpoint (.pt) with --model" if hub else ""),
            e.url, e.reason,
        ) from e
    if not args.benchmark:
        check_labels(examples)  # before the model is loaded
    model = load_for_eval(args.model, device)
    autocast, _ = autocast_and_scaler(torch.device(device).type, args.dtype)
    source = args.file or f"{args.split} split"

    if args.benchmark:
        results = benchmark(model, examples, device, args.batch_size, autocast, args.benchmark_rounds)
        n = results["n"]
        print(f"{args.model}, {n} examples of {source}, {args.dtype} on {device}, best of {results['rounds']}:")
        lines = [
            (f"batched, {args.batch_size} examples per forward (this script)", "batched"),
            ("the same as train_gpt2.py calls it (full logits, padded to 32)", "batched_full_logits"),
            ("one example per forward (build-nanogpt's loop)", "one_at_a_time"),
        ]
        for label, name in lines:
            print(f"  {label:64s} {results[f'{name}_ex_s']:9.2f} examples/s")
        print(f"  ratio batched / one example per forward: {results['ratio']:.2f}")
        disagree = False
        for name in ("batched", "batched_full_logits"):
            same, same_norm = results[f"{name}_same_pred"], results[f"{name}_same_pred_norm"]
            disagree |= same != n or same_norm != n
            print(f"  {name} vs one at a time: same predictions acc {same}/{n}, acc_norm {same_norm}/{n}, "
                  f"largest mean-loss difference {results[f'{name}_max_diff_mean_loss']:.1e}")
        if disagree:
            print("  WARNING: the methods disagree on some predictions: the rounding of different batch shapes "
                  "decided a near tie (possible in bfloat16; in float32 it would be a bug)")
    else:
        t0 = time.perf_counter()
        counts = evaluate(model.hidden_fn, examples, device, autocast=autocast, batch_size=args.batch_size,
                          block_size=model.block_size, head=model.head, pad_multiple=1, progress=True)
        results = {
            **counts,  # acc, acc_norm, n, num_correct, num_correct_norm
            "model": args.model,
            "split": None if args.file else args.split,
            "file": args.file,
            "limit": args.limit,
            "dtype": args.dtype,
            "device": str(device),
            "batch_size": args.batch_size,
            "seconds": time.perf_counter() - t0,
        }
        print(f"{args.model} | HellaSwag {source} | {results['n']} examples | acc {results['acc']:.4f} | "
              f"acc_norm {results['acc_norm']:.4f} | {args.dtype} on {device}, {results['seconds']:.1f}s")
    if args.out:
        write_atomic(args.out, (json.dumps(results, indent=2) + "\n").encode())
    return results


def main(argv=None):
    """The command line. A user's mistake (a bad flag, a missing or malformed file, a --model that
    is not a model, no network for a download) ends it with one line, `hellaswag.py: error: ...`,
    and exit status 2; anything else is a bug of ours and keeps its traceback."""
    return exit_on_user_error("hellaswag.py", lambda: run(get_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
