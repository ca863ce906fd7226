"""
train_gpt2.py's command line: the presets (the GPT-2 family and a small CPU run), the flags with
their defaults, and their checks, done once before anything is loaded.
"""

import argparse
import math
import os

from common import ArgumentParser, UserError, check_writable
from fineweb import EMBEDDED_OUT_DIR

# the GPT-2 family: shapes from the GPT-2 paper (table 2); learning rate, batch and tokens from
# llm.c's published reproductions (scripts/run_gpt2_*.sh), whose learning rates and batches are
# GPT-3's (paper, table 2.1) but for 1558M. warmup 715 steps of 2**19 tokens is GPT-3's 375M
# tokens; llm.c uses 700 steps
PRESETS = {
    # 124M with build-nanogpt's recipe: 19073 steps of 524288 tokens is 10B tokens
    "gpt2-124m": {},
    # 350M (d24): llm.c, 60000 steps of 2**19 tokens (31.5B), lr 3e-4 decaying to 0
    "gpt2-350m": dict(n_layer=24, n_head=16, n_embd=1024, max_lr=3e-4, min_lr_ratio=0.0,
                      warmup_steps=700, max_steps=60000, batch_size=32),
    # 774M (d36): llm.c, 286102 steps of 2**19 tokens (150B), lr 2.5e-4 decaying to 0
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280, max_lr=2.5e-4, min_lr_ratio=0.0,
                      warmup_steps=700, max_steps=286102, batch_size=16),
    # 1558M (d48): llm.c, 32000 steps of 2**20 tokens (33.5B), lr 6e-4 decaying to 6e-5
    "gpt2-1558m": dict(n_layer=48, n_head=25, n_embd=1600, max_lr=6e-4, min_lr_ratio=0.1,
                       warmup_steps=700, max_steps=32000, total_batch_size=1048576, batch_size=8),
    # a small GPT trained on CPU in minutes on the embedded offline corpus (CPython's docs). With
    # GPT-2's 50257-token vocabulary the lm_head is most of the work, so the step is kept small.
    # 4 sequences a micro-step: 2 micro-steps in one process, 1 each under torchrun with 2
    "cpu": dict(
        data_dir=EMBEDDED_OUT_DIR,
        log_dir="log_cpu",
        n_layer=4, n_head=4, n_embd=128, block_size=128,
        batch_size=4, seq_len=128, total_batch_size=1024,
        max_lr=2e-3, warmup_steps=20, max_steps=300,
        eval_every=100, val_steps=8, save_every=300,  # 8 x 4 x 128: 4096 validation tokens
        # float32: most CPUs have no bf16 matrix units, and where they do (this project's CI
        # machine) bf16 collapses when another process shares the cores; --dtype bfloat16 opts in.
        # No torch.compile: compiling takes longer than it saves in a run of a few minutes
        device="cpu", dtype="float32", compile=False,
    ),
}

# the recipes: GPT-2's architecture and optimizer, or the modern one that modded-nanogpt's speedrun
# and nanochat train with (rotary positions, QK-norm, ReLU squared, RMSNorm, an untied head,
# zero-initialised projections, Muon, warmup-stable-decay). Defaults like a preset's: any single
# flag still overrides one component, for an ablation
RECIPES = {
    "gpt2": {},
    "modern": dict(rotary=True, qk_norm=True, mlp_act="relu2", norm="rmsnorm", tie_embeddings=False, zero_init=True,
                   optimizer="muon", lr_schedule="wsd"),
}
ARCHITECTURE = ("rotary", "qk_norm", "mlp_act", "norm", "tie_embeddings", "zero_init")  # GPTConfig's own


def as_flags(settings):
    """{'rotary': True, 'tie_embeddings': False, 'norm': 'rmsnorm'} -> '--rotary --no-tie_embeddings --norm rmsnorm'."""
    return " ".join(f"--{'' if v else 'no-'}{k}" if isinstance(v, bool) else f"--{k} {v}" for k, v in settings.items())


def batch_size_arg(s):
    if s == "auto":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of sequences or 'auto', got {s!r}") from None


# what each preset is, for --help (its flags follow)
PRESET_NOTES = {
    "gpt2-124m": "GPT-2 124M on 10B tokens, build-nanogpt's recipe",
    "gpt2-350m": "GPT-2 350M on 31.5B tokens (llm.c)",
    "gpt2-774m": "GPT-2 774M on 150B tokens (llm.c)",
    "gpt2-1558m": "GPT-2 1558M on 33.5B tokens (llm.c)",
    "cpu": "a small GPT on CPU in minutes, offline, on the embedded corpus",
}


def get_parser(description=None):
    p = ArgumentParser("train_gpt2.py", description=description)
    a = p.add_argument
    # one line a preset (HelpFormatter keeps the line breaks), its flags as they would be typed
    presets = "".join(f"\n  {name}: {PRESET_NOTES[name]}: {as_flags(s) or 'the defaults below'}"
                      for name, s in PRESETS.items())
    a("--preset", choices=list(PRESETS), default="gpt2-124m",
      help=f"a set of defaults; explicit flags override them (default: %(default)s){presets}")
    a("--recipe", choices=list(RECIPES), default="gpt2",
      help="the model and optimizer: a set of defaults over the preset's; explicit flags override them. "
           + "; ".join(f"{name}: {as_flags(s) or 'the defaults below'}" for name, s in RECIPES.items()))
    # data and outputs
    a("--data_dir", default="edu_fineweb10B", help="folder of token shards written by fineweb.py")
    a("--log_dir", default="log", help="where log.jsonl, loss.png and checkpoints go")
    a("--resume", nargs="?", const="latest", default=None,
      help="continue the newest checkpoint in --log_dir, or the given .pt file; the flags that define the run must "
           "match it (default: off, a new run)")
    a("--init_from", default=None,
      help="start from GPT-2 weights: gpt2|gpt2-medium|gpt2-large|gpt2-xl or a Hugging Face directory "
           "(default: none, random weights)")
    a("--overwrite", action="store_true",
      help="start a new run in a --log_dir that holds another run: deletes its checkpoints, log.jsonl and loss.png first")
    # model
    a("--n_layer", type=int, default=12, help="transformer blocks")
    a("--n_head", type=int, default=12, help="attention heads per block")
    a("--n_embd", type=int, default=768, help="width of the residual stream")
    a("--block_size", type=int, default=1024, help="the model's context length")
    a("--vocab_size", type=int, default=50304, help="GPT-2's 50257 padded up to a multiple of 128 for faster matmuls")
    a("--rotary", action=argparse.BooleanOptionalAction, default=False,
      help="rotary position embeddings in attention instead of GPT-2's learned position embedding wpe")
    a("--qk_norm", action=argparse.BooleanOptionalAction, default=False,
      help="RMS-normalise each head's queries and keys before attention")
    a("--mlp_act", choices=["gelu", "relu2"], default="gelu", help="the MLP's activation: GELU (tanh form, GPT-2's) or ReLU squared")
    a("--norm", choices=["layernorm", "rmsnorm"], default="layernorm",
      help="the blocks' and the final normalisation: LayerNorm (GPT-2's) or RMSNorm without parameters")
    a("--tie_embeddings", action=argparse.BooleanOptionalAction, default=True,
      help="the lm_head shares its matrix with the token embedding wte (GPT-2's); --no-tie_embeddings gives each its own")
    a("--zero_init", action=argparse.BooleanOptionalAction, default=False,
      help="start the residual projections c_proj (and an untied lm_head) at zero")
    # batch: total_batch_size tokens per optimizer step = batch_size * seq_len * world_size * grad_accum_steps
    a("--batch_size", type=batch_size_arg, default=64,
      help="sequences per micro-step per process; auto (CUDA): the largest power of two up to the preset's that fits")
    a("--seq_len", type=int, default=1024, help="tokens per sequence")
    a("--total_batch_size", type=int, default=524288, help="tokens per optimizer step (2**19, about 0.5M, as GPT-3 124M)")
    # optimization
    a("--max_lr", type=float, default=6e-4, help="the learning rate after warmup")
    a("--min_lr_ratio", type=float, default=0.1, help="the LR decays to max_lr * min_lr_ratio")
    a("--warmup_steps", type=int, default=715, help="steps of linear warmup")
    a("--max_steps", type=int, default=19073, help="optimizer steps; the cosine ends here")
    a("--lr_schedule", choices=["cosine", "wsd"], default="cosine",
      help="after warmup: cosine decay to max_lr * min_lr_ratio at --max_steps, or wsd (warmup-stable-decay): "
           "--max_lr held, then a linear decay to max_lr * min_lr_ratio over the last --cooldown_frac of the steps")
    a("--cooldown_frac", type=float, default=0.4, help="the fraction of --max_steps that --lr_schedule wsd decays over")
    a("--optimizer", choices=["adamw", "muon"], default="adamw",
      help="adamw for every parameter, or muon for the blocks' matrices with AdamW (at --max_lr) for the embeddings, "
           "lm_head, biases and gains")
    a("--muon_lr", type=float, default=0.02,
      help="Muon's learning rate after warmup (--optimizer muon); the schedule scales it as it scales --max_lr")
    a("--weight_decay", type=float, default=0.1, help="AdamW weight decay of the matrices")
    a("--grad_clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    a("--stop_at_step", type=int, default=None,
      help="end the run after this many steps, with a checkpoint, leaving the LR schedule of --max_steps unchanged "
           "(continue with --resume) (default: off, run to --max_steps)")
    # evaluation, sampling, checkpoints
    a("--eval_every", type=int, default=250, help="validation loss, HellaSwag and samples every this many steps, and at the end")
    a("--val_steps", type=int, default=160,
      help="batches of validation loss per evaluation, in all, split over the ranks (the same tokens at any number "
           "of GPUs): 160 x 64 x 1024 is build-nanogpt's 10.5M tokens, its 20 batches on each of 8 GPUs")
    a("--hellaswag", action=argparse.BooleanOptionalAction, default=True,
      help="HellaSwag acc_norm at each evaluation (skipped with a note when the default download has no network)")
    a("--hellaswag_file", default=None, help="a local hellaswag_val.jsonl (default: download into hellaswag.py's cache)")
    a("--hellaswag_limit", type=int, default=None, help="score only the first N HellaSwag examples (default: all)")
    a("--num_samples", type=int, default=4, help="samples printed at each evaluation (0: none)")
    a("--sample_len", type=int, default=32, help="tokens per sample")
    a("--prompt", default="Hello, I'm a language model,", help="what the samples continue")
    a("--save_every", type=int, default=5000, help="write a checkpoint every this many steps, and at the end")
    # system
    a("--seed", type=int, default=1337, help="seed of the weights' initialisation")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    a("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
      help="autocast dtype of the forward pass (float16 with loss scaling, for GPUs without bf16), or plain float32")
    a("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the model")
    a("--fsdp", action="store_true",
      help="shard parameters, gradients and AdamW state over the ranks (FSDP2, under torchrun) instead of DDP; "
           "checkpoints become folders that torch.distributed.checkpoint writes and reads at any number of ranks")
    a("--consolidate", metavar="DIR", default=None,
      help="only write DIR.pt, the single-file checkpoint of the sharded checkpoint folder DIR (for hellaswag.py, "
           "model.py, save_pretrained), and exit (default: off, train)")
    a("--activation_checkpointing", action="store_true",
      help="recompute each block's activations in backward instead of storing them: less memory, about 1/3 more compute")
    a("--log_every", type=int, default=1, help="print a training line every this many steps")
    return p


def parse_args(argv=None, description=None):
    parser = get_parser(description)
    # presets are defaults, so that any explicit flag still wins. --preset and --recipe are read
    # first by a parser without --help, so that `--preset cpu --help` shows the cpu preset's defaults
    first = ArgumentParser("train_gpt2.py", add_help=False)
    first.add_argument("--preset", choices=list(PRESETS), default="gpt2-124m")
    first.add_argument("--recipe", choices=list(RECIPES), default="gpt2")
    known, _ = first.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset], **RECIPES[known.recipe])  # they set different flags
    return parser.parse_args(argv)


def check_args(args):
    """Validate the flags once, before anything is loaded or started."""
    positive = ["n_layer", "n_head", "n_embd", "block_size", "vocab_size", "seq_len",
                "total_batch_size", "max_steps", "eval_every", "val_steps", "save_every", "log_every"]
    if args.batch_size != "auto":
        positive.append("batch_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("warmup_steps", "num_samples", "sample_len", "weight_decay", "grad_clip"):
        v = getattr(args, name)
        if not (v >= 0 and math.isfinite(v)):  # NaN fails every comparison
            raise UserError(f"--{name} must be a finite number >= 0, got {v}")
    if not (args.max_lr > 0 and math.isfinite(args.max_lr)):
        raise UserError(f"--max_lr must be a finite number > 0, got {args.max_lr}")
    if not 0 <= args.min_lr_ratio <= 1:
        raise UserError(f"--min_lr_ratio must be in [0, 1], got {args.min_lr_ratio}")
    if not (args.muon_lr > 0 and math.isfinite(args.muon_lr)):
        raise UserError(f"--muon_lr must be a finite number > 0, got {args.muon_lr}")
    if not 0 <= args.cooldown_frac <= 1:
        raise UserError(f"--cooldown_frac must be in [0, 1], got {args.cooldown_frac}")
    if args.lr_schedule == "wsd" and args.warmup_steps > args.max_steps * (1 - args.cooldown_frac):
        raise UserError(f"--lr_schedule wsd: the cooldown over the last --cooldown_frac {args.cooldown_frac} of --max_steps "
                        f"{args.max_steps} starts before --warmup_steps {args.warmup_steps} end; lower one of them")
    if args.fsdp and args.optimizer == "muon":
        raise UserError("--optimizer muon does not run under --fsdp yet: Muon orthogonalises whole matrices, which "
                        "FSDP shards over the ranks; train with DDP (leave out --fsdp) or use --optimizer adamw")
    modern = {k: getattr(args, k) for k in ARCHITECTURE if getattr(args, k) != get_parser().get_default(k)}  # GPT-2's
    if args.init_from and modern:
        raise UserError(f"--init_from {args.init_from} loads GPT-2's architecture, which {as_flags(modern)} would change; "
                        f"leave them out (--recipe gpt2) to fine-tune GPT-2, or train from scratch without --init_from")
    if args.hellaswag_limit is not None and args.hellaswag_limit < 1:
        raise UserError(f"--hellaswag_limit must be >= 1, got {args.hellaswag_limit}")
    if args.warmup_steps > args.max_steps:
        raise UserError(f"--warmup_steps {args.warmup_steps} is more than --max_steps {args.max_steps}")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --log_dir and --overwrite deletes it: give one of them")
    check_writable(args.log_dir, "--log_dir", folder=True)
    if args.stop_at_step is not None and not 0 < args.stop_at_step <= args.max_steps:
        raise UserError(f"--stop_at_step {args.stop_at_step} must be in [1, --max_steps {args.max_steps}]")
    if args.init_from is None and not args.resume:
        if args.n_embd % args.n_head:
            raise UserError(f"--n_embd {args.n_embd} is not divisible by --n_head {args.n_head}; every head gets "
                            f"n_embd // n_head channels, so pick sizes that divide")
        if args.vocab_size < 50257:
            raise UserError(f"--vocab_size {args.vocab_size} is smaller than GPT-2's tokenizer (50257 tokens)")
        if args.seq_len > args.block_size:
            raise UserError(f"--seq_len {args.seq_len} is longer than the model's --block_size {args.block_size}")
    if args.hellaswag and args.hellaswag_file is not None and not os.path.isfile(args.hellaswag_file):
        raise UserError(f"--hellaswag_file {args.hellaswag_file} does not exist; give a HellaSwag JSONL file, or "
                        f"leave the flag out to download the val split, or pass --no-hellaswag")
    if os.path.exists(args.data_dir) and not os.path.isdir(args.data_dir):
        raise UserError(f"--data_dir {args.data_dir} is a file, not a folder; give the folder of token shards "
                        f"that fineweb.py wrote")
    if args.preset == "cpu" and args.data_dir != EMBEDDED_OUT_DIR and not os.path.isdir(args.data_dir):
        # the embedded corpus is prepared only in its own folder: a mistyped path is a mistake
        raise UserError(f"--data_dir {args.data_dir} does not exist; the cpu preset prepares its corpus in "
                        f"{EMBEDDED_OUT_DIR} (leave --data_dir out), or make shards with fineweb.py --out_dir {args.data_dir}")


def config_from_args(args):
    from model import GPTConfig  # here, not at the top: --help is printed before torch is imported

    return GPTConfig(block_size=args.block_size, vocab_size=args.vocab_size,
                     n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                     **{k: getattr(args, k) for k in ARCHITECTURE})
