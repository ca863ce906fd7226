"""
(being written) GPT-2 training run. Data loader section.
"""

import glob
import os

import numpy as np
import torch

from fineweb import ShardError, load_shard

# -----------------------------------------------------------------------------
# data loader


def find_shards(data_dir, split):
    """Sorted shard paths of one split ('train' or 'val') in data_dir, as fineweb.py names them."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"--data_dir {data_dir} does not exist; make shards with fineweb.py "
            f"(python fineweb.py --out_dir {data_dir})"
        )
    shards = sorted(glob.glob(os.path.join(data_dir, f"*_{split}_*.bin")))
    if not shards:
        raise FileNotFoundError(
            f"--data_dir {data_dir} has no {split} shards (*_{split}_*.bin); make them with fineweb.py"
        )
    return shards


class DataLoaderLite:
    """(B, T) batches from token shards. Rank r of W reads chunks r, r+W, r+2W, ... of B*T tokens
    (plus one for the shifted targets), so the W ranks together read exactly what one process
    would read in W consecutive steps."""

    def __init__(self, B, T, process_rank, num_processes, split, data_dir):
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.shards = find_shards(data_dir, split)
        # check every shard up front: a bad file should fail at start-up, not hours in
        need = B * T * num_processes + 1
        for path in self.shards:
            tokens = load_shard(path)
            if len(tokens) < need:
                raise ShardError(
                    f"shard {path} has {len(tokens)} tokens, fewer than batch_size*seq_len*world_size + 1 "
                    f"= {B}*{T}*{num_processes} + 1 = {need} needed for one step; regenerate it with "
                    f"fineweb.py with a larger --shard_size, or lower --batch_size/--seq_len"
                )
        self.reset()

    def reset(self):
        self.set_position(0, self.B * self.T * self.process_rank)

    def set_position(self, shard, position):
        self.current_shard = shard
        self.tokens = load_shard(self.shards[shard])
        self.current_position = position

    def state_dict(self):
        """Where this rank will read next; restore with load_state_dict for an exact resume."""
        return {"shard": self.current_shard, "position": self.current_position}

    def load_state_dict(self, state):
        if not 0 <= state["shard"] < len(self.shards):
            raise ValueError(
                f"data loader state points at shard {state['shard']} but only {len(self.shards)} shards exist"
            )
        self.set_position(state["shard"], state["position"])

    def next_batch(self):
        B, T = self.B, self.T
        buf = torch.from_numpy(self.tokens[self.current_position : self.current_position + B * T + 1].astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs
        y = buf[1:].view(B, T)  # targets: the next token at every position
        self.current_position += B * T * self.num_processes
        # move on when the next step's chunks (of all ranks, so that the ranks switch together)
        # would run past the end of the shard; the tail that cannot fill a whole step is skipped,
        # and after the last shard we wrap around to the first
        step_start = self.current_position - B * T * self.process_rank
        if step_start + B * T * self.num_processes + 1 > len(self.tokens):
            self.set_position((self.current_shard + 1) % len(self.shards), B * T * self.process_rank)
        return x, y
