"""model.py against Hugging Face's GPT2LMHeadModel (random weights, built from a GPT2Config, no
download): logits and loss both ways through save_pretrained, the parameter count, the init,
configure_optimizers, checkpoint errors, sampling and the command line."""

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, pipeline

import sample
from checkpoint import load_model
from common import UserError
from model import CONV1D_WEIGHTS, GPT, GPTConfig, config_from_hf, generate
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 on CPU: the logits below differ by at most ~4e-6
# (n_layer, n_head, n_embd, block_size, vocab_size): n_head != n_layer, block_size != 1024
SHAPES = [(2, 2, 32, 64, 300), (3, 4, 64, 32, 500), (1, 1, 16, 16, 100)]


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small gain nothing from intra-op threads, and on a busy machine the threads'
    synchronisation makes a sampling loop ~50x slower; restored afterwards for other test files."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_hf_gpt2(n_layer, n_head, n_embd, block_size, vocab_size, seed=0, **config):
    """A GPT2LMHeadModel with every parameter random, including the LayerNorm gains and the biases
    that Hugging Face initialises to 1 and 0: a wrong mapping of any of them then changes the
    logits. Weights of std 0.2 put the GELU inputs near 1, where the tanh approximation and the
    exact erf form differ enough to tell apart."""
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, bos_token_id=0, eos_token_id=0, **config)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            mean = 1.0 if re.search(r"ln_[12f]\.weight$", name) else 0.0
            p.normal_(mean, 0.2)
    return hf


def hf_dir(tmp_path, shape, **config):
    hf = random_hf_gpt2(*shape, **config)
    d = str(tmp_path / "hf")
    hf.save_pretrained(d)
    return hf, d


@pytest.fixture
def no_network(monkeypatch):
    """Offline for real: the hub's offline switches, and any socket connection is an error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError(f"test is offline: refused network connection {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# -----------------------------------------------------------------------------
# the numbers of Hugging Face's GPT-2


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-H{}-C{}-T{}-V{}".format(*s))
def test_from_pretrained_matches_hf(tmp_path, shape, no_network):
    hf, d = hf_dir(tmp_path, shape)
    ours = GPT.from_pretrained(d).eval()
    n_layer, n_head, n_embd, block_size, vocab_size = shape
    # and GPT-2's architecture in every other field (no rotary, tied, ...)
    assert ours.config == GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer,
                                    n_head=n_head, n_embd=n_embd)
    idx = torch.randint(0, vocab_size, (3, block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx, labels=idx)  # Hugging Face shifts the labels by one inside
        logits, _ = ours(idx)
        _, loss = ours(idx[:, :-1], idx[:, 1:])  # ours takes the targets already shifted
    diff = (logits - ref.logits).abs().max().item()
    print(f"HF -> ours {shape}: max |logits diff| {diff:.2e}, loss {loss.item():.6f} vs {ref.loss.item():.6f}")
    assert logits.std() > 0.5  # logits of some size, so that the tolerance means something
    torch.testing.assert_close(logits, ref.logits, **TOL)
    torch.testing.assert_close(loss, ref.loss, **TOL)


def test_hf_comparison_can_fail(tmp_path):
    """The comparison above tells GPT-2's tanh GELU from the exact one, so it catches small errors."""
    shape = SHAPES[0]
    hf, d = hf_dir(tmp_path, shape)
    ours = GPT.from_pretrained(d).eval()
    for block in ours.transformer.h:
        block.mlp.gelu = torch.nn.GELU()  # erf
    idx = torch.randint(0, shape[4], (3, shape[3]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff > 10 * TOL["atol"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-H{}-C{}-T{}-V{}".format(*s))
def test_save_pretrained_matches_hf(tmp_path, shape, no_network):
    n_layer, n_head, n_embd, block_size, vocab_size = shape
    # our model with random LayerNorm gains and biases, so that each of them must arrive in transformers
    ours = GPT.from_pretrained(hf_dir(tmp_path, shape, seed=7)[1]).eval()
    d = str(tmp_path / "export")
    ours.save_pretrained(d)
    hf = GPT2LMHeadModel.from_pretrained(d, local_files_only=True).eval()
    assert (hf.config.n_layer, hf.config.n_head, hf.config.n_embd, hf.config.n_positions, hf.config.vocab_size) == shape
    idx = torch.randint(0, vocab_size, (2, block_size), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, _ = ours(idx)
        _, loss = ours(idx[:, :-1], idx[:, 1:])
    print(f"ours -> HF {shape}: max |logits diff| {(logits - ref.logits).abs().max().item():.2e}")
    torch.testing.assert_close(logits, ref.logits, **TOL)
    torch.testing.assert_close(loss, ref.loss, **TOL)


# -----------------------------------------------------------------------------
# sizes, init, config checks


def gpt2_num_params(vocab_size, block_size, n_layer, n_embd):
    """By hand: embeddings (lm_head tied to wte, so counted once), per block c_attn (3C^2+3C),
    attn c_proj (C^2+C), c_fc (4C^2+4C), mlp c_proj (4C^2+C), two LayerNorms (4C); then ln_f."""
    C = n_embd
    return vocab_size * C + block_size * C + n_layer * (12 * C * C + 13 * C) + 2 * C


def test_gpt2_124M_parameter_count():
    assert gpt2_num_params(50257, 1024, 12, 768) == 124_439_808
    assert gpt2_num_params(50304, 1024, 12, 768) == 124_475_904
    with torch.device("meta"):  # shapes only: no memory, no init time
        hf = GPT2LMHeadModel(GPT2Config())
        ours = GPT(GPTConfig())
        padded = GPT(GPTConfig(vocab_size=50304))
    assert sum(p.numel() for p in hf.parameters()) == 124_439_808  # HF also ties lm_head to wte
    assert ours.num_params() == 124_439_808
    assert padded.num_params() == 124_475_904
    # the same state dict layout as Hugging Face, key for key, once Conv1D weights are transposed
    sd_ours, sd_hf = ours.state_dict(), hf.state_dict()
    assert set(sd_ours) == {k for k in sd_hf if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    for k, v in sd_ours.items():
        want = sd_hf[k].shape[::-1] if k.endswith(CONV1D_WEIGHTS) else sd_hf[k].shape
        assert v.shape == want, k


def test_init():
    n_layer = 6
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=n_layer, n_head=4, n_embd=128))
    assert m.lm_head.weight is m.transformer.wte.weight
    residual_std = 0.02 / (2 * n_layer) ** 0.5
    seen_residual = 0
    for name, p in m.named_parameters():
        p = p.detach()
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif re.search(r"ln_[12f]\.weight$", name):
            assert torch.all(p == 1), name
        else:
            want = residual_std if name.endswith("c_proj.weight") else 0.02
            seen_residual += name.endswith("c_proj.weight")
            # with >= 8k samples the sample std is within 1% of the truth; 5% is a wide margin
            assert p.std().item() == pytest.approx(want, rel=0.05), name
            assert abs(p.mean().item()) < 6 * want / p.numel() ** 0.5, name
    assert seen_residual == 2 * n_layer


def test_forward_longer_than_block_size():
    m = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=1, n_embd=16))
    logits, loss = m(torch.zeros(2, 8, dtype=torch.long))
    assert logits.shape == (2, 8, 50) and loss is None
    with pytest.raises(ValueError, match=r"length 9.*block_size is 8"):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_loss_is_cross_entropy():
    """A plain-Python recomputation: the mean of -log softmax(logits)[target]."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=1, n_embd=16))
    idx = torch.randint(0, 50, (2, 9))
    logits, loss = m(idx[:, :-1], idx[:, 1:])  # non-contiguous targets are fine
    nll = []
    for b in range(2):
        for t in range(8):
            row = logits[b, t].double()
            nll.append(torch.logsumexp(row, 0) - row[idx[b, t + 1]])
    assert loss.item() == pytest.approx(sum(nll).item() / len(nll), rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=30, n_head=4), "n_embd 30 is not divisible by n_head 4"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=50257.0), "vocab_size must be a positive integer"),
    (dict(block_size=True), "block_size must be a positive integer"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


# -----------------------------------------------------------------------------
# the optimizer


def test_configure_optimizers(capsys):
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    opt = m.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, device_type="cpu")
    assert capsys.readouterr().out == ""  # silent unless asked: no printing from every rank
    name = {id(p): n for n, p in m.named_parameters()}
    decay, no_decay = opt.param_groups
    decayed = [name[id(p)] for p in decay["params"]]
    not_decayed = [name[id(p)] for p in no_decay["params"]]
    # matrices (embeddings, linear weights) decay; biases and LayerNorm gains do not
    want = {n for n in name.values() if n.endswith("weight") and not re.search(r"ln_[12f]\.", n)}
    assert set(decayed) == want and "transformer.wte.weight" in want
    assert set(not_decayed) == set(name.values()) - want
    assert len(decayed) + len(not_decayed) == len(name)  # the tied matrix once, nothing twice
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for g in opt.param_groups:
        assert g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8
    assert isinstance(opt, torch.optim.AdamW)
    # model.py asks for the fused kernel on cuda, cpu and mps (this torch has it on all three)
    # and not on other devices
    assert decay["fused"] is True
    other = m.configure_optimizers(0.1, 3e-4, device_type="xla").param_groups[0]
    assert not other.get("fused")

    # the fused step is AdamW's step: three steps against torch's plain for-loop implementation
    ref_model = GPT(m.config)
    ref_model.load_state_dict(m.state_dict())
    ref_params = dict(ref_model.named_parameters())
    ref = torch.optim.AdamW([{"params": [ref_params[n] for n in decayed], "weight_decay": 0.1},
                             {"params": [ref_params[n] for n in not_decayed], "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    idx = torch.randint(0, 50, (4, 9))
    for _ in range(3):
        for mm, o in ((m, opt), (ref_model, ref)):
            o.zero_grad()
            mm(idx[:, :-1], idx[:, 1:])[1].backward()
            o.step()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-6, atol=1e-7)

    m.configure_optimizers(0.1, 3e-4, device_type="cpu", verbose=True)
    out = capsys.readouterr().out
    n_decay = 50 * 16 + 8 * 16 + 2 * (3 * 16 * 16 + 16 * 16 + 4 * 16 * 16 + 4 * 16 * 16)
    assert f"with {n_decay:,} parameters" in out
    assert f"with {m.num_params() - n_decay:,} parameters" in out


# -----------------------------------------------------------------------------
# checkpoints that do not fit


@pytest.mark.parametrize("field, value", [
    ("activation_function", "relu"),
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
])
def test_from_pretrained_refuses_unimplemented_config(tmp_path, field, value, no_network):
    _, d = hf_dir(tmp_path, (1, 1, 16, 8, 50), **{field: value})
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")) as e:
        GPT.from_pretrained(d)
    assert d in str(e.value)


@pytest.mark.parametrize("field, value", [
    ("activation_function", "gelu"),  # the exact erf GELU: close to GPT-2's, but not it
    ("n_inner", 32),
    ("scale_attn_weights", False),
    ("add_cross_attention", True),
    ("layer_norm_epsilon", 1e-6),
    ("tie_word_embeddings", False),
])
def test_config_from_hf_refuses(field, value):
    cfg = GPT2Config(n_layer=1, n_head=1, n_embd=16, n_positions=8, vocab_size=50, **{field: value})
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")):
        config_from_hf(cfg)


def test_config_from_hf_accepts_gpt2():
    for act in ("gelu_new", "gelu_pytorch_tanh"):  # both are the tanh approximation
        cfg = config_from_hf(GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=32, vocab_size=500,
                                        activation_function=act, n_inner=256))
        assert cfg == GPTConfig(block_size=32, vocab_size=500, n_layer=3, n_head=4, n_embd=64)


def test_from_pretrained_unknown_name(tmp_path, no_network):
    with pytest.raises(ValueError, match="neither one of gpt2, gpt2-medium"):
        GPT.from_pretrained(str(tmp_path / "nowhere"))


@pytest.fixture
def tiny_hf_state_dict():
    hf = random_hf_gpt2(1, 1, 16, 8, 50)
    ours = GPT(config_from_hf(hf.config)).eval()
    return hf, ours, {k: v.clone() for k, v in hf.state_dict().items()}


def test_load_hf_state_dict_ignores_buffers_and_missing_lm_head(tiny_hf_state_dict):
    hf, ours, sd = tiny_hf_state_dict
    # the causal-mask buffers that older transformers versions keep in the state dict
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    del sd["lm_head.weight"]  # tied: a checkpoint need not store it
    ours.load_hf_state_dict(sd)
    idx = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, **TOL)


@pytest.mark.parametrize("change, message", [
    ("missing", "missing keys: ['transformer.h.0.mlp.c_fc.bias']"),
    ("unexpected", "unexpected keys: ['transformer.h.0.mlp.c_gate.weight']"),
    ("shape", "transformer.wpe.weight has shape (9, 16), expected (8, 16)"),
    ("conv1d", "transformer.h.0.mlp.c_fc.weight has shape (16, 64), expected (64, 16)"),
    ("untied", "lm_head.weight differs from transformer.wte.weight"),
])
def test_load_hf_state_dict_errors(tiny_hf_state_dict, change, message):
    _, ours, sd = tiny_hf_state_dict
    if change == "missing":
        del sd["transformer.h.0.mlp.c_fc.bias"]
    elif change == "unexpected":
        sd["transformer.h.0.mlp.c_gate.weight"] = torch.zeros(16, 64)
    elif change == "shape":
        sd["transformer.wpe.weight"] = torch.zeros(9, 16)
    elif change == "conv1d":  # an nn.Linear-layout weight where Conv1D's (in, out) is expected
        sd["transformer.h.0.mlp.c_fc.weight"] = sd["transformer.h.0.mlp.c_fc.weight"].t()
    elif change == "untied":
        sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        ours.load_hf_state_dict(sd, source="ckpt_dir")
    assert str(e.value).startswith("ckpt_dir:")


# -----------------------------------------------------------------------------
# export of a padded-vocabulary model: transformers, its tokenizer and its pipeline


@pytest.fixture(scope="module")
def padded_export(tmp_path_factory):
    torch.manual_seed(3)
    ours = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    d = str(tmp_path_factory.mktemp("export"))
    ours.save_pretrained(d)
    return ours, d


def test_save_pretrained_padded_vocab(padded_export, no_network):
    ours, d = padded_export
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 50257
    hf = GPT2LMHeadModel.from_pretrained(d, local_files_only=True).eval()
    assert hf.lm_head.weight.shape == (50257, 32)
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(idx).logits
        logits, _ = ours(idx)
    assert ref.shape == (2, 64, 50257)
    torch.testing.assert_close(logits[..., :50257], ref, **TOL)
    # and back: our loader reads our export
    back = GPT.from_pretrained(d).eval()
    assert back.config.vocab_size == 50257
    with torch.no_grad():
        torch.testing.assert_close(back(idx)[0], ref, **TOL)
    with pytest.raises(ValueError, match="cannot export 60000 vocabulary rows"):
        ours.save_pretrained(d, vocab_size=60000)


TEXTS = [
    "Hello, I'm a language model,",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\n  indented\ttab   ",
    "naïve café, 東京, Ελληνικά, emoji 👋🏽 👨‍👩‍👧 and numbers 3.14159 1,000,000",
    "they'll've we'RE DON'T   trailing spaces   ",
]


def test_exported_tokenizer_matches_ours(padded_export, no_network):
    _, d = padded_export
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    enc = get_tokenizer()
    assert len(tok) == 50257 and tok.eos_token_id == 50256 and tok.model_max_length == 1024
    assert tok("Hello, I'm a language model,")["input_ids"] == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    for text in TEXTS:
        assert tok(text)["input_ids"] == enc.encode_ordinary(text), text
        assert tok.decode(enc.encode_ordinary(text)) == text
    # transformers reads <|endoftext|> in text as the special token
    text = "end.<|endoftext|>Next"
    assert tok(text)["input_ids"] == enc.encode(text, allowed_special="all") == [437, 13, 50256, 10019]


def test_exported_pipeline_offline(padded_export, no_network):
    """transformers' greedy text-generation pipeline on our export continues the prompt exactly
    as our own generate with top_k=1 does."""
    ours, d = padded_export
    prompt = "Hello, I'm a language model,"
    pipe = pipeline("text-generation", model=d, tokenizer=d, device="cpu")
    out = pipe(prompt, max_new_tokens=8, do_sample=False)
    enc = get_tokenizer()
    idx = torch.tensor([enc.encode_ordinary(prompt)])
    greedy = generate(ours, idx, max_new_tokens=8, top_k=1)
    assert out[0]["generated_text"] == enc.decode(greedy[0].tolist())
    assert len(out[0]["generated_text"]) > len(prompt)


# -----------------------------------------------------------------------------
# sampling


def greedy_reference(m, idx, n, block_size):
    """Greedy decoding written out: argmax of the last position, context = last block_size tokens."""
    for _ in range(n):
        with torch.no_grad():
            logits, _ = m(idx[:, -block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=128, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(5)  # logits of order 1: neither uniform nor one-hot
    return m


def test_generate_reproducible_and_shape(tiny):
    idx = torch.randint(0, 128, (3, 5), generator=torch.Generator().manual_seed(0))
    run = lambda seed: generate(tiny, idx, 20, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (3, 5 + 20)  # 25 tokens from a model with block_size 16: the context is cropped
    assert torch.equal(a[:, :5], idx)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(tiny, idx, 1, temperature=0)


@pytest.mark.parametrize("block_size", [None, 4])
def test_generate_top1_is_greedy(tiny, block_size):
    idx = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(5))
    out = generate(tiny, idx, 12, top_k=1, block_size=block_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, greedy_reference(tiny, idx, 12, block_size or 16))


def test_generate_top_k_only_samples_the_top_k(tiny):
    idx = torch.randint(0, 128, (4, 3), generator=torch.Generator().manual_seed(6))
    out = generate(tiny, idx, 20, top_k=3, generator=torch.Generator().manual_seed(0))
    outside = 0
    with torch.no_grad():
        for t in range(3, out.size(1)):
            logits, _ = tiny(out[:, max(0, t - 16):t])
            top3 = logits[:, -1].topk(3).indices
            assert (top3 == out[:, t:t + 1]).any(-1).all(), t
            outside += (logits[:, -1].argmax(-1) != out[:, t]).sum().item()
    assert outside > 0  # it did sample, not just take the argmax


@pytest.fixture(scope="module")
def padded_rigged():
    """A padded-vocabulary model whose largest logits are all in the padding rows: ln_f outputs the
    same vector h everywhere, and the padding rows of the tied matrix are 100 * h."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=8, vocab_size=50304, n_layer=1, n_head=1, n_embd=16)).eval()
    with torch.no_grad():
        h = torch.randn(16)
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.copy_(h)
        m.transformer.wte.weight[50257:] = 100 * h
    return m


def test_generate_never_samples_padding(padded_rigged):
    idx = torch.randint(0, 50257, (4, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (padded_rigged(idx)[0].argmax(-1) >= 50257).all()  # the trap is set
    for top_k in (None, 50, 1):
        out = generate(padded_rigged, idx, 10, top_k=top_k, generator=torch.Generator().manual_seed(0))
        assert out.shape == (4, 13) and out.max().item() < 50257, top_k


def test_sample_text(padded_rigged):
    prompt = "Hello, I'm a language model,"
    a = sample.sample_text(padded_rigged, prompt, num_samples=3, max_new_tokens=5, device="cpu", seed=1)
    b = sample.sample_text(padded_rigged, prompt, num_samples=3, max_new_tokens=5, device="cpu", seed=1)
    assert a == b and len(a) == 3
    assert all(s.startswith(prompt) and len(s) > len(prompt) for s in a)


# -----------------------------------------------------------------------------
# loading our sources, and the command line


def test_load_model_checkpoint(tmp_path, padded_rigged):
    path = str(tmp_path / "model_00010.pt")
    # the layout train_gpt2.py writes
    torch.save({"model": padded_rigged.state_dict(), "config": asdict(padded_rigged.config), "step": 10}, path)
    m = load_model(path)
    assert m.config == padded_rigged.config and not m.training
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[0], padded_rigged(idx)[0], rtol=0, atol=0)
    torch.save({"weights": {}}, path)
    with pytest.raises(UserError, match=r"could not load it as a train_gpt2.py checkpoint \(not a train_gpt2.py checkpoint\)"):
        load_model(path)


def test_cli_samples_from_hf_dir(padded_export, monkeypatch, capsys, no_network):
    _, d = padded_export
    argv = ["sample.py", "--model", d, "--num_samples", "2", "--max_new_tokens", "4", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    sample.main()
    lines = capsys.readouterr().out.splitlines()
    samples = [s for s in lines if s.startswith("> ")]
    assert len(samples) == 2 and all(s.startswith("> Hello, I'm a language model,") for s in samples)
    monkeypatch.setattr(sys, "argv", argv + ["--top_k", "-1"])
    with pytest.raises(SystemExit) as e:
        sample.main()
    assert e.value.code == 2 and "--top_k" in capsys.readouterr().err


def test_cli_help():
    r = subprocess.run([sys.executable, "model.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--model" in r.stdout and "--max_new_tokens" in r.stdout


def test_activation_checkpointing_changes_nothing_but_memory():
    """GPT.activation_checkpointing (train_gpt2.py --activation_checkpointing) recomputes each block
    in backward: the same loss and gradients to 1e-6, and in eval mode nothing is recomputed."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=3, n_head=2, n_embd=32))
    idx = torch.randint(0, 300, (4, 32))
    grads = []
    for on in (False, True):
        m.zero_grad()
        m.activation_checkpointing = on
        loss = m(idx, idx)[1]
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-6)
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, rtol=0, atol=1e-6, msg=n)


def test_activation_checkpointing_recomputes_in_training_only():
    """Counted by a pre-hook on every block (a recomputation stops once backward has what it needs,
    before the block's end): with activation checkpointing a training forward and backward runs
    each block twice; in eval mode, even with gradients, once, as without it."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=3, n_head=2, n_embd=32))
    m.activation_checkpointing = True
    calls = []
    for i, block in enumerate(m.transformer.h):
        block.register_forward_pre_hook(lambda mod, inp, i=i: calls.append(i))
    idx = torch.randint(0, 300, (2, 16))
    for training, forwards in ((True, 2), (False, 1)):
        calls.clear()
        m.train(training)
        m(idx, idx)[1].backward()
        assert sorted(calls) == sorted([0, 1, 2] * forwards), f"training={training}"
