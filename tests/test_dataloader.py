"""train_gpt2.DataLoaderLite over fineweb.py's shards: ranks interleave to read exactly what one
process would, shard rollover and wrap-around, exact save/restore, and clear errors for bad shards."""

import os

import numpy as np
import pytest
import torch

from shards import ShardError, find_shards, write_manifest, write_shard
from train_gpt2 import DataLoaderLite

# train shard i holds i*10000 + position: every token says where it was read from
TRAIN_LENGTHS = [100, 70, 50]
B, T = 2, 4


def make_dir(d, lengths=TRAIN_LENGTHS, val_length=40):
    os.makedirs(d, exist_ok=True)
    write_shard(os.path.join(d, "t_val_000000.bin"), 60000 + np.arange(val_length))
    for i, n in enumerate(lengths, start=1):
        write_shard(os.path.join(d, f"t_train_{i:06d}.bin"), i * 10000 + np.arange(n))
    write_manifest(str(d))
    return str(d)


def shard_tokens(lengths=TRAIN_LENGTHS):
    return [(i + 1) * 10000 + np.arange(n) for i, n in enumerate(lengths)]


def reference_steps(lengths, W, steps):
    """(shard, start) of each step, recomputed by the rule: a step is W chunks of B*T tokens plus
    one; when the next step does not fit in the shard, everyone moves to the next shard (after
    the last, the first)."""
    out, shard, start = [], 0, 0
    for _ in range(steps):
        out.append((shard, start))
        start += B * T * W
        if start + B * T * W + 1 > lengths[shard]:
            shard, start = (shard + 1) % len(lengths), 0
    return out


def expected_batch(tokens, start):
    buf = torch.from_numpy(tokens[start : start + B * T + 1].astype(np.int64))
    return buf[:-1].view(B, T), buf[1:].view(B, T)


@pytest.mark.parametrize("W", [1, 2, 3])
def test_ranks_together_read_consecutive_chunks(tmp_path, W):
    d = make_dir(tmp_path)
    loaders = [DataLoaderLite(B, T, r, W, "train", d) for r in range(W)]
    data = shard_tokens()
    steps = reference_steps(TRAIN_LENGTHS, W, 40)  # several wrap-arounds
    for shard, start in steps:
        for r, loader in enumerate(loaders):
            x, y = loader.next_batch()
            ex, ey = expected_batch(data[shard], start + r * B * T)
            torch.testing.assert_close(x, ex)
            torch.testing.assert_close(y, ey)


def test_union_of_ranks_equals_one_process(tmp_path):
    """Within a shard, ranks 0..W-1 of a step read the W chunks that one process reads in W calls."""
    d = make_dir(tmp_path, lengths=[400])
    W = 3
    single = DataLoaderLite(B, T, 0, 1, "train", d)
    ranks = [DataLoaderLite(B, T, r, W, "train", d) for r in range(W)]
    for step in range(400 // (B * T * W) - 1):
        one = [single.next_batch() for _ in range(W)]
        for r in range(W):
            x, y = ranks[r].next_batch()
            torch.testing.assert_close(x, one[r][0])
            torch.testing.assert_close(y, one[r][1])


def test_rollover_and_wrap_around(tmp_path):
    d = make_dir(tmp_path)
    W = 2  # a step is 2 chunks of 8 tokens, and needs 17
    loader = DataLoaderLite(B, T, 0, W, "train", d)
    where = []
    for _ in range(15):
        x, _ = loader.next_batch()
        where.append(divmod(int(x[0, 0]), 10000))
    # by hand: shard 1 (100 tokens) holds steps at 0..80 (96+17 > 100); shard 2 (70) 0..48;
    # shard 3 (50) 0..32 (32+17 = 49 fits); then back to shard 1
    assert where == ([(1, p) for p in (0, 16, 32, 48, 64, 80)] + [(2, p) for p in (0, 16, 32, 48)]
                     + [(3, p) for p in (0, 16, 32)] + [(1, 0), (1, 16)])
    assert loader.state_dict() == {"shard": 0, "position": 32}


def test_save_restore_continues_exactly(tmp_path):
    d = make_dir(tmp_path)
    W = 2
    for k in (0, 3, 6, 9, 13):  # before, inside and right after rollovers and the wrap-around
        loaders = [DataLoaderLite(B, T, r, W, "train", d) for r in range(W)]
        for _ in range(k):
            for ld in loaders:
                ld.next_batch()
        states = [ld.state_dict() for ld in loaders]
        assert all(s == states[0] for s in states)  # the same on every rank: one is saved
        after = [[ld.next_batch() for _ in range(8)] for ld in loaders]
        for r in range(W):
            resumed = DataLoaderLite(B, T, r, W, "train", d)
            resumed.load_state_dict(dict(states[0]))
            for (x, y), (ex, ey) in zip([resumed.next_batch() for _ in range(8)], after[r]):
                torch.testing.assert_close(x, ex)
                torch.testing.assert_close(y, ey)


def test_reset_starts_over(tmp_path):
    d = make_dir(tmp_path)
    loader = DataLoaderLite(B, T, 0, 1, "val", d)
    first = loader.next_batch()
    loader.next_batch()
    loader.reset()
    torch.testing.assert_close(loader.next_batch()[0], first[0])
    torch.testing.assert_close(first[0].flatten(), torch.arange(60000, 60008))


def corrupt(path, offset, value, dtype="<i4"):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.array([value], dtype=dtype).tobytes())


def check_error(exc, *parts):
    msg = str(exc.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    assert "fineweb.py" in msg  # says how to regenerate


@pytest.mark.parametrize("shard, offset, value, found, expected", [
    ("t_train_000002.bin", 0, 12345, "magic 12345", "expected 20240520"),  # bad magic
    ("t_train_000001.bin", 4, 7, "version 7", "expected 1"),  # wrong version
])
def test_bad_header(tmp_path, shard, offset, value, found, expected):
    d = make_dir(tmp_path)
    path = os.path.join(d, shard)
    corrupt(path, offset, value)
    with pytest.raises(ShardError) as e:
        DataLoaderLite(B, T, 0, 1, "train", d)
    check_error(e, path, found, expected)


def test_truncated_shard(tmp_path):
    d = make_dir(tmp_path)
    path = os.path.join(d, "t_train_000003.bin")
    with open(path, "r+b") as f:
        f.truncate(1024 + 2 * 50 - 6)
    with pytest.raises(ShardError) as e:
        DataLoaderLite(B, T, 0, 1, "train", d)
    check_error(e, path, f"is {1024 + 94} bytes", "says 50 tokens (1124 bytes)", "truncated")
    with open(path, "r+b") as f:
        f.truncate(100)  # not even a header
    with pytest.raises(ShardError) as e:
        DataLoaderLite(B, T, 0, 1, "train", d)
    check_error(e, path, "100 bytes", "1024-byte header")


def test_too_small_shard(tmp_path, capsys):
    """A shard shorter than one step (fineweb.py's last one, with a small --shard_size) is skipped
    with one printed line; the split is refused only when no shard holds a step."""
    d = make_dir(tmp_path, lengths=[100, 16])
    loader = DataLoaderLite(B, T, 0, 2, "train", d)  # a step needs 2*4*2 + 1 = 17 tokens
    assert [os.path.basename(p) for p in loader.shards] == ["t_train_000001.bin"]
    assert "skipping 1 train shard(s) shorter than one step of 16 + 1 tokens: t_train_000002.bin (16 tokens)" \
        in capsys.readouterr().out
    assert len(DataLoaderLite(B, T, 0, 1, "train", d).shards) == 2  # one process needs 9: both
    with pytest.raises(ShardError) as e:
        DataLoaderLite(B, T, 0, 2, "train", make_dir(tmp_path / "short", lengths=[16, 12]))
    check_error(e, "no train shard holds the 16 + 1 tokens that one step reads (the largest has 16)")


def test_missing_directory_and_no_shards(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        DataLoaderLite(B, T, 0, 1, "train", missing)
    check_error(e, missing, "does not exist")
    d = str(tmp_path / "valonly")
    os.makedirs(d)
    write_shard(os.path.join(d, "t_val_000000.bin"), np.arange(100))
    write_shard(os.path.join(d, "t_train_000001.bin.tmp"), np.arange(100))  # an unfinished write is no shard
    write_manifest(d)
    with pytest.raises(FileNotFoundError) as e:
        DataLoaderLite(B, T, 0, 1, "train", d)
    check_error(e, d, "no train shards", "*_train_*.bin")
    assert find_shards(d, "val") == [os.path.join(d, "t_val_000000.bin")]


def test_restoring_a_position_that_does_not_fit_is_a_clear_error(tmp_path):
    d = make_dir(tmp_path)
    # saved by one process at shard 1's last step (80 + 9 <= 100), resumed on 2 processes: the
    # step (17 tokens) no longer fits there, and rank 1 would read past the end
    loader = DataLoaderLite(B, T, 1, 2, "train", d)
    with pytest.raises(ShardError, match=r"position 88 in .*t_train_000001.bin \(100 tokens\).*step of 16 tokens"):
        loader.load_state_dict({"shard": 0, "position": 88})
    with pytest.raises(ShardError, match="shard 3, but 3 shards exist"):
        loader.load_state_dict({"shard": 3, "position": 0})
    loader.load_state_dict({"shard": 0, "position": 80})  # 80 + 17 <= 100 fits
    assert int(loader.next_batch()[0][0, 0]) == 10000 + 88  # rank 1 reads one chunk further


@pytest.mark.parametrize("W, accum", [(1, 4), (2, 2), (4, 1)])
def test_a_step_reads_the_same_tokens_on_any_number_of_ranks(tmp_path, W, accum):
    """With step_tokens fixed, W ranks of accum micro-steps read together the rows one process
    reads in W * accum micro-steps, in the same order, step after step, across shard ends: so a
    run resumes exactly on another number of GPUs."""
    d = make_dir(tmp_path)
    step_tokens = 4 * B * T
    one = DataLoaderLite(B, T, 0, 1, "train", d, step_tokens=step_tokens)
    loaders = [DataLoaderLite(B, T, r, W, "train", d, step_tokens=step_tokens) for r in range(W)]
    for _ in range(12):  # several shard ends and a wrap-around
        expected = torch.cat([one.next_batch()[0] for _ in range(4)])
        got = torch.cat([torch.cat([ld.next_batch()[0] for ld in loaders]) for _ in range(accum)])
        # micro-step m of rank r reads chunk m * W + r: in this order, the one process's rows
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert all(ld.state_dict() == one.state_dict() for ld in loaders)


def test_token_ids_beyond_the_vocabulary_name_the_shard(tmp_path):
    d = make_dir(tmp_path)
    with pytest.raises(ShardError, match="t_train_000003.bin"):
        DataLoaderLite(B, T, 0, 1, "train", d, vocab_size=30049)  # shard 3 holds ids up to 30049
    DataLoaderLite(B, T, 0, 1, "train", d, vocab_size=30050)


def test_micro_step_m_of_rank_r_reads_chunk_m_times_ranks_plus_r(tmp_path):
    """The layout itself, token by token and unsorted: micro-step m of rank r reads chunk
    m * W + r of its step (micro-step-major, so that a step's tokens do not depend on W)."""
    d = make_dir(tmp_path, lengths=[400])
    W, accum = 2, 3
    step_tokens = accum * W * B * T  # 48: steps at 0, 48, ..., 336 (336 + 49 <= 400)
    loaders = [DataLoaderLite(B, T, r, W, "train", d, step_tokens=step_tokens) for r in range(W)]
    for step in range(8):
        for m in range(accum):
            for r, loader in enumerate(loaders):
                x, y = loader.next_batch()
                start = 10000 + step * step_tokens + (m * W + r) * B * T
                assert x.flatten().tolist() == list(range(start, start + B * T)), (step, m, r)
                assert y.flatten().tolist() == list(range(start + 1, start + B * T + 1)), (step, m, r)


def test_a_shard_of_k_steps_and_one_token_holds_k_steps(tmp_path):
    """A step reads step_tokens + 1 tokens: a shard of exactly 3 * 16 + 1 holds the steps at 0, 16
    and 32, the last of which ends on its last token; resuming at 32 is allowed, at 33 not."""
    d = make_dir(tmp_path, lengths=[3 * 16 + 1, 2 * 16 + 1])
    W = 2  # a step is 2 chunks of 8 tokens
    loaders = [DataLoaderLite(B, T, r, W, "train", d) for r in range(W)]
    where = []
    for _ in range(7):
        x, _ = loaders[0].next_batch()
        last = int(loaders[1].next_batch()[1][-1, -1])
        where.append(divmod(int(x[0, 0]), 10000) + (last % 10000,))
    assert where == [(1, 0, 16), (1, 16, 32), (1, 32, 48), (2, 0, 16), (2, 16, 32), (1, 0, 16), (1, 16, 32)]
    loader = DataLoaderLite(B, T, 1, W, "train", d)
    loader.load_state_dict({"shard": 0, "position": 32})
    assert int(loader.next_batch()[1][-1, -1]) == 10000 + 48  # the shard's last token
    with pytest.raises(ShardError, match="position 33"):
        loader.load_state_dict({"shard": 0, "position": 33})


def test_reset_and_wrap_around_keep_the_open_shard(tmp_path, monkeypatch):
    """The validation loader's reset at every evaluation, and a wrap-around to the same single
    shard, neither reopen nor rescan it (the token ids of a 100M-token shard are read at opening)."""
    import train_gpt2

    opened = []
    real_load_shard = train_gpt2.load_shard
    monkeypatch.setattr(train_gpt2, "load_shard", lambda path, **k: opened.append(path) or real_load_shard(path, **k))
    d = make_dir(tmp_path)
    loader = DataLoaderLite(B, T, 0, 1, "val", d, vocab_size=70000)
    for _ in range(3):
        for _ in range(6):  # 40 tokens hold 4 steps of 8 + 1: a wrap-around
            loader.next_batch()
        loader.reset()
    assert opened == [os.path.join(d, "t_val_000000.bin")]
