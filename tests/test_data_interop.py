"""Data sets from other tools and places: shards without a manifest (llm.c, modded-nanogpt), a data
set recognised by its content on --resume (moved or copied, not regenerated), fineweb.py's
half-replaced data sets, the leftovers of a killed fineweb.py run, and folder permissions."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fineweb
from shards import MANIFEST, REPLACING, ShardError, check_vocab, data_fingerprint, find_shards, write_shard
from test_train import ROOT, data_dir, read_log, run  # noqa: F401 (data_dir: the fixture)
from test_user_faults import refused, snapshot

FLAGS = ["--total_batch_size", "64", "--eval_every", "2", "--save_every", "2", "--val_steps", "4"]


def without_manifest(data_dir, d):
    shutil.copytree(data_dir, d)
    os.remove(d / MANIFEST)
    return str(d)


# -----------------------------------------------------------------------------
# shards without a manifest


def test_shards_without_a_manifest_train_with_a_note(data_dir, tmp_path, capsys):
    """Complete shards in llm.c's format (a header whose count matches the file size) train as
    one data set, with one printed note; the same run on the manifest's data set loses the same."""
    d = without_manifest(data_dir, tmp_path / "llmc")
    out = run(d, tmp_path / "log", *FLAGS, "--max_steps", "3")
    printed = capsys.readouterr().out
    assert printed.count(f"--data_dir {d} has no {MANIFEST}: reading its 4 shards (5,300 tokens) as one data set") == 1
    assert out["losses"] == run(data_dir, tmp_path / "log_ref", *FLAGS, "--max_steps", "3")["losses"]


def test_shards_without_a_manifest_are_still_checked(data_dir, tmp_path, capsys):
    d = without_manifest(data_dir, tmp_path / "llmc")
    assert find_shards(d, "train") == [os.path.join(d, f"test_train_00000{i}.bin") for i in (1, 2, 3)]
    check_vocab(d, 50257)  # ids are left to the loader, which checks each shard it opens
    with open(os.path.join(d, "test_train_000002.bin"), "ab") as f:
        f.write(b"\0\0")  # one token more than its header says: not whole
    err = refused(capsys, run, d, tmp_path / "log", *FLAGS, "--max_steps", "2")
    assert "test_train_000002.bin is 2426 bytes but its header says 700 tokens" in err
    assert not os.path.exists(tmp_path / "log")
    # a token id beyond the vocabulary: refused when the loader opens the shard
    d2 = without_manifest(data_dir, tmp_path / "llmc2")
    write_shard(os.path.join(d2, "test_train_000001.bin"), np.r_[np.arange(1499), 60000])
    err = refused(capsys, run, d2, tmp_path / "log2", *FLAGS, "--max_steps", "2")
    assert "test_train_000001.bin holds token id 60000, but the model's vocab_size is 50304" in err


def test_a_half_replaced_data_set_is_refused(data_dir, tmp_path, capsys):
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    (d / REPLACING).write_text("")
    os.remove(d / MANIFEST)
    with pytest.raises(ShardError, match="is half replaced: a fineweb.py --overwrite into it stopped"):
        find_shards(str(d), "train")


# -----------------------------------------------------------------------------
# --resume knows its data by content


def test_resume_on_a_moved_copy_of_the_data_and_not_on_other_data(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path / "ref", *FLAGS, "--max_steps", "4")
    run(data_dir, tmp_path / "log", *FLAGS, "--max_steps", "4", "--stop_at_step", "2")
    moved = tmp_path / "moved"
    shutil.copytree(data_dir, moved)
    capsys.readouterr()
    run(str(moved), tmp_path / "log", *FLAGS, "--max_steps", "4", "--resume")
    assert f"--data_dir {data_dir} -> {moved}" in capsys.readouterr().out
    losses = lambda d: [e["train_loss"] for e in read_log(d) if "train_loss" in e]  # noqa: E731
    assert losses(tmp_path / "log") == losses(tmp_path / "ref")  # the same run, bit for bit
    # the same path, other contents (regenerated): refused, the run's files intact
    write_shard(str(moved / "test_train_000002.bin"), np.arange(700) % 97)
    fineweb.index(str(moved), overwrite=True)
    before = snapshot(tmp_path / "log")
    err = refused(capsys, run, str(moved), tmp_path / "log", *FLAGS, "--max_steps", "6", "--resume")
    assert f"--data_dir {moved} does not hold the data the run was trained on (its --data_dir {moved}, whose " \
           f"shards' contents differ)" in err
    assert snapshot(tmp_path / "log") == before


def test_fingerprint_reads_content_not_names_or_places(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    assert data_fingerprint(str(copy)) == data_fingerprint(data_dir)
    tokens = np.fromfile(copy / "test_train_000003.bin", dtype="<u2", offset=1024)
    tokens[-1] ^= 1  # one token at the end of one shard
    write_shard(str(copy / "test_train_000003.bin"), tokens)
    assert data_fingerprint(str(copy)) != data_fingerprint(data_dir)


# -----------------------------------------------------------------------------
# fineweb.py: what a killed run leaves, and the mode of what it makes

KILLED = """
import sys, time
sys.path.insert(0, {root!r})
import fineweb

def documents():
    for i in range(400):
        yield "the quick brown fox jumps over the lazy dog " * 20
    print("ready", flush=True)
    time.sleep(600)

fineweb.write_shards(documents(), {out!r}, "t", shard_size=4096, val_tokens=4096, progress=False)
"""


def start_and_kill(out_dir):
    """A fineweb.py run into out_dir killed with SIGKILL once it has written shards."""
    p = subprocess.Popen([sys.executable, "-c", KILLED.format(root=ROOT, out=str(out_dir))], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


@pytest.mark.parametrize("existing", [False, True], ids=["new_out_dir", "existing_out_dir"])
def test_a_killed_fineweb_run_is_cleaned_up_by_the_next(tmp_path, capsys, existing):
    out = tmp_path / "data"
    if existing:
        out.mkdir()
    start_and_kill(out)
    left = fineweb.staging_leftovers(str(out))
    assert len(left) == 1 and os.listdir(left[0][0])  # its staging folder, with shards in it
    assert not (out / MANIFEST).exists()
    m = fineweb.write_shards(["some text " * 300], str(out), "t", shard_size=512, val_tokens=256, progress=False)
    assert f"removed {left[0][0]} (" in capsys.readouterr().out
    assert not os.path.exists(left[0][0]) and fineweb.staging_leftovers(str(out)) == []
    assert sorted(os.listdir(out)) == sorted([MANIFEST] + [s["name"] for s in m["shards"]])


def test_a_running_fineweb_runs_folder_is_left_alone(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    live = tempfile.mkdtemp(prefix=fineweb.STAGING_PREFIX, dir=out)
    fd = fineweb._lock_staging(live)  # held as a running run holds it
    try:
        assert fineweb.staging_leftovers(str(out)) == []
    finally:
        os.close(fd)
    assert [p for p, _ in fineweb.staging_leftovers(str(out))] == [live]
    # a folder that only looks like one (files no run of ours writes) is never ours to delete
    mine = tempfile.mkdtemp(prefix=fineweb.STAGING_PREFIX, dir=out)
    open(os.path.join(mine, "notes.txt"), "w").close()
    assert mine not in [p for p, _ in fineweb.staging_leftovers(str(out))]


def test_a_swap_that_fails_leaves_the_data_set_refused_until_rerun(tmp_path, monkeypatch):
    out = str(tmp_path / "data")
    fineweb.write_shards(["old text " * 300], out, "t", shard_size=512, val_tokens=256, progress=False)
    real_replace = os.replace
    moved = []

    def replace(src, dst):  # the disk fails after the first new shard has moved into out
        if os.path.dirname(dst) == out:
            if moved:
                raise OSError(28, "No space left on device")
            moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(fineweb.InputError, match=r"writing the shards failed: the disk is full: free some space or write elsewhere \(ENOSPC\); rerun this command"):
        fineweb.write_shards(["new text " * 300], out, "t", shard_size=512, val_tokens=256, overwrite=True, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(ShardError, match="is half replaced"):
        find_shards(out, "train")
    m = fineweb.write_shards(["new text " * 300], out, "t", shard_size=512, val_tokens=256, overwrite=True, progress=False)
    assert find_shards(out, "train") and not os.path.exists(os.path.join(out, REPLACING))
    assert sorted(os.listdir(out)) == sorted([MANIFEST] + [s["name"] for s in m["shards"]])


def test_a_new_data_folder_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fineweb.write_shards(["text " * 300], str(tmp_path / "data"), "t", shard_size=512, val_tokens=256, progress=False)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "data").st_mode & 0o777 == 0o755


def test_a_read_only_out_dir_is_one_line_in_the_words_of_every_script(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = str(tmp_path / "data")
    with pytest.raises(fineweb.InputError) as e:
        fineweb.write_shards(["text " * 300], out, "t", shard_size=512, val_tokens=256, progress=False)
    assert str(e.value) == f"--out_dir {out}: cannot make a folder there: the file system is read-only: write elsewhere (EROFS)"


def test_the_cpu_presets_corpus_is_made_before_the_model_on_first_use(tmp_path, monkeypatch, capsys):
    """No data/pydoc yet: prepare_data (called before the model is built) makes it, checks it and
    returns its fingerprint, which a second call finds unchanged."""
    import train_gpt2
    from parallel import Dist
    from train_args import parse_args

    monkeypatch.chdir(tmp_path)
    args = parse_args(["--preset", "cpu"])
    d = Dist(ddp=False, rank=0, world_size=1, device="cpu")
    fingerprint = train_gpt2.prepare_data(args, d)
    assert "preparing the embedded corpus" in capsys.readouterr().out
    assert fingerprint == data_fingerprint(args.data_dir) == train_gpt2.prepare_data(args, d)
    assert "preparing" not in capsys.readouterr().out  # made once
