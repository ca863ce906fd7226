"""
Sample from OpenAI's GPT-2 (needs a network the first time), a local Hugging Face GPT-2
directory, or one of our train_gpt2.py checkpoints:

    python sample.py --model gpt2 --prompt "Hello, I'm a language model," --num_samples 5 --max_new_tokens 30
    python sample.py --model path/to/hf_dir
    python sample.py --model log/model_19073.pt
    python sample.py --model log/model_19073.pt --prompt ''    # unconditional: continues <|endoftext|>
"""

import contextlib
import sys

from common import ArgumentParser, UserError, exit_on_user_error


def get_parser():
    p = ArgumentParser("sample.py", description=__doc__)
    a = p.add_argument
    a("--model", default="gpt2", help="gpt2|gpt2-medium|gpt2-large|gpt2-xl (downloaded once), a Hugging Face GPT-2 directory, or a train_gpt2.py checkpoint (.pt)")
    a("--prompt", default="Hello, I'm a language model,", help="the text every sample continues")
    a("--num_samples", type=int, default=5, help="how many samples")
    a("--max_new_tokens", type=int, default=30, help="tokens sampled after the prompt")
    a("--top_k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    a("--temperature", type=float, default=1.0, help="divides the logits: below 1 sharper, above 1 flatter")
    a("--seed", type=int, default=42, help="seed of the sampling generator")
    a("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    return p


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    # --help at once, not after the seconds that importing torch takes on a busy machine
    exit_on_user_error("sample.py", get_parser().parse_args)

import torch

from checkpoint import load_model
from device import resolve_device
from model import generate
from tokenizer import GPT2_EOT, get_tokenizer


def sample_text(model, prompt, num_samples, max_new_tokens, device, top_k=50, temperature=1.0, seed=42,
                autocast=contextlib.nullcontext(), block_size=None):
    """Decoded samples of prompt; reproducible for a given seed on a given device. model may be a
    GPT or anything that maps idx to (logits, loss), such as a compiled GPT (give block_size)."""
    enc = get_tokenizer()
    # an empty prompt samples unconditionally, continuing <|endoftext|> (a document's start) as
    # OpenAI's GPT-2 does; that token is not part of the text returned
    ids = enc.encode_ordinary(prompt) or [GPT2_EOT]
    skip = 0 if prompt else 1
    tokens = torch.tensor(ids, dtype=torch.long, device=device)
    idx = tokens.unsqueeze(0).repeat(num_samples, 1)  # (num_samples, T)
    gen = torch.Generator(device=device).manual_seed(seed)
    with autocast:
        out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen,
                       block_size=block_size)
    return [enc.decode(row[skip:].tolist()) for row in out]


def run(argv=None):
    args = get_parser().parse_args(argv)
    for flag, least in (("num_samples", 1), ("max_new_tokens", 0), ("top_k", 0)):
        if getattr(args, flag) < least:
            raise UserError(f"--{flag} must be >= {least}, got {getattr(args, flag)}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    device = resolve_device(args.device or "auto")
    model = load_model(args.model, device)
    for text in sample_text(model, args.prompt, args.num_samples, args.max_new_tokens, device,
                            top_k=args.top_k or None, temperature=args.temperature, seed=args.seed):
        print(">", text)


def main(argv=None):
    exit_on_user_error("sample.py", run, argv)


if __name__ == "__main__":
    main()
