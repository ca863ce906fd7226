"""
GPT-2: the network (GPTConfig, CausalSelfAttention, MLP, Block, GPT), OpenAI's weights in and
out through Hugging Face transformers, and generate(). Nothing here knows of flags, devices or
files beyond weights: errors are plain exceptions, and the script that called says which flag.

Sample from it with sample.py (`python model.py ...` does the same):

    python sample.py --model gpt2 --prompt "Hello, I'm a language model," --num_samples 5
    python sample.py --model log/model_19073.pt
"""

import logging
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from muon import Muon, MuonWithAdamW
from tokenizer import GPT2_EOT, GPT2_VOCAB_SIZE, save_hf_tokenizer

HF_GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# OpenAI's checkpoints use a Conv1D module for these, whose weight is the transpose of nn.Linear's
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# -----------------------------------------------------------------------------
# the network


@dataclass
class GPTConfig:
    block_size: int = 1024  # max sequence length
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    # the modern recipe's components (train_gpt2.py --recipe modern); each default is GPT-2's
    rotary: bool = False  # rotary position embeddings in attention instead of the learned wpe
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    mlp_act: str = "gelu"  # "gelu" (tanh approximation) or "relu2" (ReLU squared)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm" (without parameters)
    tie_embeddings: bool = True  # lm_head shares its matrix with wte
    zero_init: bool = False  # the residual projections c_proj, and an untied lm_head, start at zero

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type is bool and not isinstance(v, bool):
                raise ValueError(f"GPTConfig.{f.name} must be True or False, got {v!r}")
            if f.type is int and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"GPTConfig.{f.name} must be a positive integer, got {v!r}")
            allowed = {"mlp_act": ("gelu", "relu2"), "norm": ("layernorm", "rmsnorm")}.get(f.name, (v,))
            if v not in allowed:
                raise ValueError(f"GPTConfig.{f.name} must be one of {', '.join(allowed)}, got {v!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                             f"every head gets n_embd // n_head channels, so pick sizes that divide")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: rotary embeddings rotate pairs of channels, so the head size "
                             f"n_embd // n_head = {self.n_embd // self.n_head} must be even")


def make_norm(config):
    # RMSNorm (Zhang & Sennrich 2019) without parameters: LayerNorm less its mean subtraction, gain and bias
    return nn.RMSNorm(config.n_embd, elementwise_affine=False) if config.norm == "rmsnorm" else nn.LayerNorm(config.n_embd)


def apply_rotary(x, cos, sin):
    """Rotate each channel pair (x[i], x[i + hs/2]) of x (B, n_head, T, hs) by position * theta_i: a
    rotated query and key then score by their relative position only (RoFormer, Su et al. 2021)."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, n_head, T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, n_head, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        # output projection back into the residual stream
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.qk_norm, self.rotary = config.qk_norm, config.rotary
        if config.rotary:
            hs = config.n_embd // config.n_head
            # hs/2 frequencies from 1 down to 1/10000 radian per position (RoFormer's base)
            theta = 10000.0 ** (-torch.arange(hs // 2, dtype=torch.float32) / (hs // 2))  # (hs/2,)
            angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), theta)  # (block_size, hs/2)
            # buffers, not parameters: computed at construction, kept out of the state dict
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):
        B, T, C = x.size()  # batch, sequence length, n_embd
        qkv = self.c_attn(x)  # (B, T, 3 * C)
        q, k, v = qkv.split(self.n_embd, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, n_head, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, n_head, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, n_head, T, hs)
        if self.qk_norm:
            # unit RMS per head: the scores stay bounded however large the weights grow, which
            # lets the modern recipe train at higher learning rates without attention collapsing
            q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
        if self.rotary:
            cos, sin = self.cos[:T].to(q.dtype), self.sin[:T].to(q.dtype)  # (T, hs/2), in autocast's dtype
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # flash attention on CUDA, a fused kernel on CPU: the (T, T) matrix is never materialised
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, n_head, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        # GPT-2 was trained with the tanh approximation of GELU; the exact erf form gives
        # slightly different logits than OpenAI's checkpoints
        self.gelu = nn.GELU(approximate="tanh")
        # ReLU squared (Primer, So et al. 2021): cheaper than GELU and trains faster in the modern recipe
        self.relu2 = config.mlp_act == "relu2"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x):
        x = self.c_fc(x)  # (B, T, 4 * n_embd)
        x = F.relu(x).square() if self.relu2 else self.gelu(x)
        return self.c_proj(x)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x):
        # pre-LayerNorm: the residual stream itself is never normalised, so gradients flow
        # straight from the loss to the embeddings
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                # rotary embeddings encode positions inside attention: no learned table then
                **({} if config.rotary else {"wpe": nn.Embedding(config.block_size, config.n_embd)}),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying (as in GPT-2): the input embedding and the output projection share one
            # matrix, which saves vocab_size * n_embd parameters (38.6M at 124M, 30% of the model)
            self.transformer.wte.weight = self.lm_head.weight
        # recompute each block in backward instead of storing its activations (train_gpt2.py's
        # --activation_checkpointing); it changes memory and time, never the result
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        if config.zero_init:
            # every block starts as the identity and the first logits are uniform; the gradient
            # still reaches every matrix from the first steps on (modded-nanogpt). A tied head is
            # left as it is: zeroing it would zero the input embedding and every gradient with it
            for block in self.transformer.h:
                torch.nn.init.zeros_(block.attn.c_proj.weight)
                torch.nn.init.zeros_(block.mlp.c_proj.weight)
            if not config.tie_embeddings:
                torch.nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                # every block adds two outputs (attn and mlp) to the residual stream, so its
                # variance grows with 2 * n_layer; scaling these projections by 1/sqrt(2 * n_layer)
                # keeps the stream at unit scale at init (GPT-2 paper, section 2.3)
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, return_hidden=False):
        """(logits (B, T, vocab_size), loss or None). With return_hidden, the hidden states after
        ln_f (B, T, n_embd) come in place of the logits, for a caller that applies lm_head only at
        the few positions it needs (HellaSwag scores only the endings' tokens)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {T}: the model's block_size is "
                             f"{self.config.block_size}; crop the input to the last {self.config.block_size} tokens")
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if not self.config.rotary:
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
            x = x + self.transformer.wpe(pos)  # (B, T, n_embd)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training:
                # keep only each block's input; its activations are recomputed in backward, which
                # trades one more forward of the blocks for most of the activation memory
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.transformer.ln_f(x)  # (B, T, n_embd)
        if return_hidden:
            return x, None
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            # cross-entropy in float32 even under bf16 autocast: the log-sum-exp over 50k logits
            # loses too much precision in bf16
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def num_params(self):
        # the tied wte/lm_head matrix is one Parameter, so parameters() counts it once
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 per parameter that takes part in a matmul (2 forward, 4
        backward), plus attention's QK^T and AV, 6 * 2 * n_layer * seq_len * n_embd (the PaLM
        paper's appendix B). Embeddings are lookups and do no FLOPs: the position embedding, and
        the token embedding when untied (tied, its one matrix counts once, as the lm_head's)."""
        n = self.num_params()
        if "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return 6 * n + 12 * self.config.n_layer * seq_len * self.config.n_embd

    def estimate_mfu(self, tokens_per_sec, seq_len, peak_flops):
        """Model FLOPs utilisation: the FLOP/s the training step does, over the hardware's peak."""
        return self.flops_per_token(seq_len) * tokens_per_sec / peak_flops

    def configure_optimizers(self, weight_decay, learning_rate, device_type, verbose=False, optimizer="adamw",
                             muon_lr=0.02):
        """AdamW for every parameter, or (optimizer="muon") Muon at muon_lr for the blocks' matrices
        and AdamW at learning_rate for the rest, as one MuonWithAdamW."""
        params = [p for p in self.parameters() if p.requires_grad]
        muon = []
        if optimizer == "muon":
            # Muon is for matrices mapping one hidden space onto another; the embedding and the head
            # (a row per token) and the vectors keep AdamW (modded-nanogpt)
            muon = [p for p in self.transformer.h.parameters() if p.requires_grad and p.dim() == 2]
            params = [p for p in params if all(p is not q for q in muon)]
        elif optimizer != "adamw":
            raise ValueError(f"optimizer must be adamw or muon, got {optimizer!r}")
        # decay the matrices (linear weights, embeddings); never the biases and LayerNorm gains,
        # which set scales and offsets that weight decay would pull towards zero for no benefit
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # the fused kernel does the whole update in one launch per group instead of several per
        # parameter; torch has it for CUDA, CPU and MPS tensors
        use_fused = device_type in ("cuda", "cpu", "mps")
        if verbose:
            print(
                (f"Muon parameter tensors: {len(muon)}, with {sum(p.numel() for p in muon):,} parameters\n" if muon else "")
                + f"decayed parameter tensors: {len(decay)}, with {sum(p.numel() for p in decay):,} parameters\n"
                f"non-decayed parameter tensors: {len(no_decay)}, with {sum(p.numel() for p in no_decay):,} parameters\n"
                f"using fused AdamW: {use_fused}"
            )
        adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=use_fused)
        if not muon:
            return adamw
        # no weight decay in Muon: its steps have a fixed size, which bounds the matrices' growth
        # (modded-nanogpt's speedrun decays none). lr_ratio: the schedule reaches Muon as
        # muon_lr * (scheduled lr / learning_rate)
        return MuonWithAdamW(Muon([{"params": muon, "lr_ratio": muon_lr / learning_rate}], lr=muon_lr), adamw)

    # -------------------------------------------------------------------------
    # Hugging Face GPT-2 checkpoints in and out

    @classmethod
    def from_pretrained(cls, name_or_path):
        """OpenAI's GPT-2 ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', fetched by transformers)
        or a local directory holding a Hugging Face GPT-2 checkpoint (config.json + weights)."""
        if name_or_path not in HF_GPT2_NAMES and not os.path.isdir(name_or_path):
            raise ValueError(f"{name_or_path!r} is neither one of {', '.join(HF_GPT2_NAMES)} nor an "
                             f"existing directory with a Hugging Face GPT-2 checkpoint (config.json + weights)")
        hf = load_hf_gpt2(name_or_path)
        model = cls(config_from_hf(hf.config, source=name_or_path))
        model.load_hf_state_dict(hf.state_dict(), source=name_or_path)
        return model

    def load_hf_state_dict(self, sd_hf, source="checkpoint"):
        # Hugging Face's attention keeps its causal mask as a buffer in some versions; it is not
        # a weight and we build the mask inside SDPA instead
        sd_hf = {k: v for k, v in sd_hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        sd = self.state_dict()
        expected = set(sd.keys())
        # lm_head.weight is tied to wte; a checkpoint may or may not store it
        if "lm_head.weight" not in sd_hf and "transformer.wte.weight" in sd_hf:
            sd_hf["lm_head.weight"] = sd_hf["transformer.wte.weight"]
        elif "lm_head.weight" in sd_hf and "transformer.wte.weight" in sd_hf:
            if not torch.equal(sd_hf["lm_head.weight"], sd_hf["transformer.wte.weight"]):
                # both keys load into our one tied matrix: one would silently overwrite the other
                raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; "
                                 f"this GPT-2 ties them and cannot load an untied checkpoint")
        missing = sorted(expected - set(sd_hf))
        unexpected = sorted(set(sd_hf) - expected)
        if missing or unexpected:
            raise ValueError(f"{source}: state dict does not match GPT-2's layout; "
                             f"missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                             f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        with torch.no_grad():
            for k in expected:
                src = sd_hf[k]
                # OpenAI's checkpoints use a Conv1D module whose weight is (in, out): the
                # transpose of nn.Linear's (out, in)
                if k.endswith(CONV1D_WEIGHTS):
                    src = src.t()
                if src.shape != sd[k].shape:
                    raise ValueError(f"{source}: {k} has shape {tuple(src.shape)}, expected {tuple(sd[k].shape)}")
                sd[k].copy_(src)

    def save_pretrained(self, out_dir, vocab_size=None):
        """Write a Hugging Face GPT-2 directory that GPT2LMHeadModel.from_pretrained(out_dir) and
        AutoTokenizer.from_pretrained(out_dir) load offline. A model trained with the vocabulary
        padded to 50304 is exported with GPT-2's real 50257 rows (the padding rows are never the
        target of any token, so dropping them changes no probability of a real token)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = self.config
        # zero_init is only an initialisation: such a network is still GPT-2's
        modern = [f"{k}={getattr(cfg, k)}" for k in ("rotary", "qk_norm", "mlp_act", "norm", "tie_embeddings")
                  if getattr(cfg, k) != getattr(GPTConfig, k)]
        if modern:
            raise ValueError(f"export to Hugging Face is for GPT-2-shaped models; this one has {', '.join(modern)}, "
                             f"which GPT2LMHeadModel cannot hold")
        if vocab_size is None:
            vocab_size = min(cfg.vocab_size, GPT2_VOCAB_SIZE)
        if vocab_size > cfg.vocab_size:
            raise ValueError(f"cannot export {vocab_size} vocabulary rows from a model with {cfg.vocab_size}")
        eot = GPT2_EOT if vocab_size > GPT2_EOT else None  # <|endoftext|> opens and closes documents, when there is one
        hf_config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                               n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0, bos_token_id=eot, eos_token_id=eot, tie_word_embeddings=True)
        hf = GPT2LMHeadModel(hf_config)
        sd = {}
        for k, v in self.state_dict().items():
            v = v.detach().float().cpu()
            if k.endswith(CONV1D_WEIGHTS):
                v = v.t()
            if k in ("transformer.wte.weight", "lm_head.weight"):
                v = v[:vocab_size]
            sd[k] = v.contiguous()
        missing, unexpected = hf.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        if missing or unexpected:
            raise RuntimeError(f"export to Hugging Face failed: missing {missing}, unexpected {unexpected}")
        os.makedirs(out_dir, exist_ok=True)
        hf.save_pretrained(out_dir)
        if vocab_size == GPT2_VOCAB_SIZE:
            save_hf_tokenizer(out_dir)


def is_hub_name(name):
    """Whether name is one of OpenAI's GPT-2s on the Hugging Face hub (and no local path)."""
    return name in HF_GPT2_NAMES and not os.path.exists(name)


def load_hf_gpt2(name_or_path):
    """transformers' GPT2LMHeadModel of a local directory or a GPT-2 name. The local copy first: a
    name already in the Hugging Face cache loads without asking the hub. Then the hub, with
    huggingface_hub's line per retry (5 over about 25 s when it is unreachable) kept quiet: the
    caller's one-line error says it instead. Raises OSError when the hub cannot be reached."""
    from transformers import GPT2LMHeadModel

    try:
        return GPT2LMHeadModel.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        if not is_hub_name(name_or_path):
            raise
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return GPT2LMHeadModel.from_pretrained(name_or_path)
    finally:
        log.setLevel(level)


def config_from_hf(hf_config, source="checkpoint"):
    """GPTConfig from a transformers GPT2Config; refuses what our architecture does not implement."""
    c = hf_config
    problems = []
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={c.activation_function!r} (only GELU tanh, 'gelu_new', is implemented)")
    if getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (the MLP is 4 * n_embd = {4 * c.n_embd} wide)")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if getattr(c, "reorder_and_upcast_attn", False):
        problems.append("reorder_and_upcast_attn=True")
    if not getattr(c, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False (attention is scaled by 1/sqrt(head_size))")
    if getattr(c, "add_cross_attention", False):
        problems.append("add_cross_attention=True")
    if abs(getattr(c, "layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={c.layer_norm_epsilon} (LayerNorm uses 1e-5)")
    if not getattr(c, "tie_word_embeddings", True):
        problems.append("tie_word_embeddings=False (lm_head is tied to wte)")
    if problems:
        raise ValueError(f"{source}: config.json has settings this GPT-2 does not implement: " + "; ".join(problems))
    return GPTConfig(
        block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd
    )


# -----------------------------------------------------------------------------
# sampling


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=50, generator=None, block_size=None):
    """Extend idx (B, T) by max_new_tokens sampled tokens. top_k=None samples from the full
    distribution; the context is cropped to block_size (default: the model's). model may be a
    GPT or anything that maps idx to (logits, loss), such as a compiled GPT."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if block_size is None:
        block_size = model.config.block_size
    vocab_limit = None
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -block_size:]
        logits, _ = model(idx_cond)
        logits = logits[:, -1, :].float() / temperature  # (B, vocab_size)
        if vocab_limit is None:
            # never sample the padding rows of a vocabulary padded beyond GPT-2's 50257
            vocab_limit = min(logits.size(-1), GPT2_VOCAB_SIZE)
        logits = logits[:, :vocab_limit]
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))  # (B, k)
            logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


if __name__ == "__main__":  # the sampling command is sample.py (nanoGPT's name); this keeps `python model.py` working
    __import__("sample").main()
