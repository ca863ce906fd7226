"""FSDP and the collectives, checked finely by one torchrun launch of tests/fsdp_worker.py (gloo,
2 CPU processes, about 15 s): the ranks' smallest --batch_size auto, bf16's reduction dtype, the
resharding rule, gathered(), the gradient sync skipped before the last micro-step, a sharded
checkpoint loaded into other weights, and its consolidation into one file. (The whole run with
--fsdp, against DDP and one process, is tests/test_train.py's.)"""

import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    """(the worker's output folder, what rank 0 and rank 1 observed)."""
    out = tmp_path_factory.mktemp("fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "fsdp_worker.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    ranks = []
    for r in range(2):
        path = out / f"rank{r}.json"
        ranks.append(json.loads(path.read_text()) if path.exists() else {})
    assert proc.returncode == 0 and all(r.get("done") for r in ranks), proc.stderr[-3000:]
    return out, ranks


def test_batch_size_auto_takes_the_smallest_answer_of_the_ranks(fsdp):
    assert [r["all_reduce_min"] for r in fsdp[1]] == [4, 4]  # ranks answered 8 and 4


def test_bfloat16_computes_in_bf16_and_reduces_gradients_in_fp32(fsdp):
    for r in fsdp[1]:
        assert r["bf16_units"] == 4  # 3 blocks and the root
        assert r["bf16_policies"] == [["torch.bfloat16", "torch.float32"]]


def test_every_block_but_the_last_reshards_after_forward(fsdp):
    for r in fsdp[1]:
        assert r["sharded_after_forward"] == [True, True, False] and r["root_sharded_after_forward"] is False
        # and so again after gathered(), which changed the rule while inside
        assert r["sharded_after_forward_after_gathered"] == [True, True, False]


def test_gathered_holds_the_whole_model_on_every_rank(fsdp):
    rank0, rank1 = fsdp[1]
    for r in (rank0, rank1):
        assert r["sharded_inside_gathered"] == 0 and r["sharded_after_gathered"] == r["params"] == 40
    assert rank0["lone_forward_shape"] == [2, 16, 128]  # rank 0 forwarded alone, as sampling does


def test_gradients_are_reduced_on_the_last_micro_step_only_and_equal_one_process(fsdp):
    for r in fsdp[1]:
        # before micro-step 0 and 1 no parameter holds a (reduce-scattered) gradient yet
        assert r["grads_before_micro_step"] == [False, False]
        assert r["loss_diff"] < 1e-6 and r["grad_diff"] < 1e-6


def test_sharded_checkpoint_loads_into_other_weights(fsdp):
    for r in fsdp[1]:
        assert r["loaded_weights_diff"] == 0 and r["loaded_adam_diff"] == 0 and r["next_step_weights_diff"] == 0
        # the param groups are the checkpoint's too (dcp.load fills the tensors in place; the
        # rest of the optimizer's state needs set_state_dict)
        assert r["loaded_weight_decays"] == [0.2, 0.0]


def test_consolidated_checkpoint_holds_the_weights_and_the_adamw_state(fsdp):
    out, _ = fsdp
    path = checkpoint.consolidate_checkpoint(str(out / "model_00001"))
    assert path == str(out / "model_00001.pt")
    consolidated = torch.load(path, weights_only=True)
    full = torch.load(out / "full.pt", weights_only=True)  # what the 2 ranks held, gathered
    assert consolidated["step"] == 1
    for k, v in full["model"].items():
        torch.testing.assert_close(consolidated["model"][k], v, rtol=0, atol=0, msg=k)
    model = GPT(GPTConfig(**consolidated["config"]))
    model.load_state_dict(consolidated["model"])
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    optimizer.load_state_dict(consolidated["optimizer"])
    # the run's weight decay (0.2), not consolidate_checkpoint's default: a run resumed from this
    # file takes its param groups from it
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]
    names = dict(model.named_parameters())
    assert set(full["optimizer"]["state"]) == set(names)
    for name, state in full["optimizer"]["state"].items():
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optimizer.state[names[name]][k], state[k], rtol=0, atol=0, msg=f"{name} {k}")
