"""The modern recipe (train_gpt2.py --recipe modern): each component against a plain recomputation
(rotary against a complex-number rotation, QK-norm, ReLU squared, RMSNorm, Muon's Newton-Schulz
against an SVD and one Muon step written out), the untied head and the zero init, the WSD schedule,
the flags and their refusals; then the whole recipe: golden losses, DDP equal to one process, and
an exact kill/resume."""

import copy
import math

import pytest
import torch

import train_gpt2
from model import GPT, MLP, CausalSelfAttention, GPTConfig, apply_rotary
from muon import Muon, newton_schulz
from test_train import TINY, assert_weights_close, data_dir, read_log, run, torchrun, train_losses, write_hellaswag  # noqa: F401

PUBLISHED_NS = (3.4445, -4.7750, 2.0315)  # modded-nanogpt's quintic, written here independently of muon.py
MODERN = dict(rotary=True, qk_norm=True, mlp_act="relu2", norm="rmsnorm", tie_embeddings=False, zero_init=True)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=300, n_layer=2, n_head=2, n_embd=32, **kw))


def rms_norm(x, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


# -----------------------------------------------------------------------------
# the components, one by one


def test_rotary_is_a_complex_rotation_and_sees_relative_positions():
    attn = CausalSelfAttention(GPTConfig(block_size=16, n_head=2, n_embd=32, rotary=True))
    B, nh, T, hs = 2, 2, 16, 16
    x = torch.randn(B, nh, T, hs, dtype=torch.float64)
    got = apply_rotary(x, attn.cos[:T].double(), attn.sin[:T].double())
    # channel pair (i, i + hs/2) as one complex number, multiplied by e^{i t theta_j}, theta_j = 10000^(-2j/hs)
    z = torch.complex(x[..., : hs // 2], x[..., hs // 2 :])
    theta = torch.tensor([10000.0 ** (-2 * j / hs) for j in range(hs // 2)], dtype=torch.float64)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta  # (T, hs/2)
    ref = z * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(got, torch.cat([ref.real, ref.imag], -1), rtol=0, atol=1e-6)
    # the score of a rotated query at m and key at n depends on m - n only
    q, k = torch.randn(hs, dtype=torch.float64), torch.randn(hs, dtype=torch.float64)
    rot = lambda v, t: apply_rotary(v.expand(1, 1, T, hs), attn.cos.double()[:T], attn.sin.double()[:T])[0, 0, t]  # noqa: E731
    score = lambda m, n: (rot(q, m) @ rot(k, n)).item()  # noqa: E731
    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-6) and score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)


def test_attention_with_qk_norm_and_rotary_against_a_plain_recomputation():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, n_head=2, n_embd=32, rotary=True, qk_norm=True)
    attn = CausalSelfAttention(cfg)
    B, T, C, nh, hs = 2, 10, 32, 2, 16
    x = torch.randn(B, T, C)
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(C, -1)
    heads = lambda t: t.view(B, T, nh, hs).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    eps = torch.finfo(torch.float32).eps  # F.rms_norm's default
    q, k = rms_norm(q, eps), rms_norm(k, eps)
    angle = torch.arange(T)[:, None] * torch.tensor([10000.0 ** (-2 * j / hs) for j in range(hs // 2)])
    rotate = lambda t: torch.view_as_real(torch.complex(t[..., :8], t[..., 8:]) * torch.polar(torch.ones_like(angle), angle))  # noqa: E731
    q, k = (torch.cat([rotate(t)[..., 0], rotate(t)[..., 1]], -1) for t in (q, k))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(attn(x), attn.c_proj(y), rtol=1e-5, atol=1e-5)


def test_relu2_mlp_against_a_plain_recomputation():
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(n_head=2, n_embd=32, mlp_act="relu2"))
    x = torch.randn(3, 5, 32)
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    ref = (torch.clamp(h, min=0) ** 2) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), ref, rtol=1e-5, atol=1e-6)


def test_rmsnorm_has_no_parameters_and_divides_by_the_rms():
    model = tiny(norm="rmsnorm")
    assert not [k for k in model.state_dict() if ".ln_" in k or "ln_f" in k]
    x = torch.randn(2, 5, 32) * 3 + 1
    for norm in (model.transformer.h[0].ln_1, model.transformer.h[1].ln_2, model.transformer.ln_f):
        torch.testing.assert_close(norm(x), rms_norm(x, torch.finfo(torch.float32).eps), rtol=1e-5, atol=1e-6)


def test_untied_head_rotary_and_their_counts():
    tied, untied, rotary = tiny(), tiny(tie_embeddings=False), tiny(rotary=True)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert {"lm_head.weight", "transformer.wte.weight"} <= set(untied.state_dict())
    assert untied.num_params() == tied.num_params() + 300 * 32
    # a separate head is trained on its own: a step changes it, not the embedding through it
    untied.lm_head.weight.grad = torch.ones_like(untied.lm_head.weight)
    wte = untied.transformer.wte.weight.clone()
    torch.optim.SGD(untied.parameters(), lr=1.0).step()
    assert torch.equal(untied.transformer.wte.weight, wte)
    assert "transformer.wpe.weight" not in rotary.state_dict()
    assert rotary.num_params() == tied.num_params() - 16 * 32
    # the head's matmul costs the same tied or untied; the embeddings are lookups
    assert untied.flops_per_token(16) == tied.flops_per_token(16) == rotary.flops_per_token(16)


def test_zero_init_zeroes_the_projections_and_an_untied_head():
    model = tiny(tie_embeddings=False, zero_init=True)
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    assert not model.lm_head.weight.any() and model.transformer.wte.weight.std() > 0.01
    idx = torch.randint(0, 300, (2, 8))
    logits, loss = model(idx, idx)
    assert not logits.any() and loss.item() == pytest.approx(math.log(300), rel=1e-6)
    # tied, the head is the embedding: zeroing it would zero the input and every gradient
    tied = tiny(zero_init=True)
    assert tied.lm_head.weight.std() > 0.01 and not tied.transformer.h[0].mlp.c_proj.weight.any()


def test_config_checks_the_new_fields():
    for kw, message in [(dict(mlp_act="relu"), "mlp_act must be one of gelu, relu2"),
                        (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm"),
                        (dict(rotary=1), "rotary must be True or False"),
                        (dict(n_head=4, n_embd=12, rotary=True), "head size n_embd // n_head = 3 must be even")]:
        with pytest.raises(ValueError, match=message):
            GPTConfig(**kw)


def test_save_pretrained_refuses_a_modern_model(tmp_path):
    with pytest.raises(ValueError, match=r"export to Hugging Face is for GPT-2-shaped models; this one has "
                                         r"rotary=True, qk_norm=True, mlp_act=relu2, norm=rmsnorm, tie_embeddings=False,"):
        tiny(**MODERN).save_pretrained(str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


# -----------------------------------------------------------------------------
# Muon


def test_newton_schulz_is_near_orthogonal_and_acts_on_the_singular_values():
    torch.manual_seed(0)
    for shape in [(48, 16), (16, 64), (32, 32)]:
        G = torch.randn(*shape, dtype=torch.float64) @ torch.diag(torch.linspace(0.2, 1, shape[1], dtype=torch.float64))
        X = newton_schulz(G.float()).double()
        s = torch.linalg.svdvals(X)
        assert 0.6 < s.min() and s.max() < 1.25, (shape, s.min(), s.max())  # the quintic's band, not exactly 1
        # independent recomputation: the iteration maps each singular value s of G / |G|_F through
        # a s + b s^3 + c s^5, five times, and keeps G's singular vectors
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        s = S / G.norm()
        a, b, c = PUBLISHED_NS
        for _ in range(5):
            s = a * s + b * s**3 + c * s**5
        torch.testing.assert_close(X, U @ torch.diag(s) @ Vh, rtol=0, atol=2e-5)


def test_two_muon_steps_against_a_plain_recomputation():
    torch.manual_seed(0)
    p0 = torch.randn(48, 16)
    grads = [torch.randn(48, 16), torch.randn(48, 16)]
    p = torch.nn.Parameter(p0.clone())
    opt = Muon([p], lr=0.05, momentum=0.95, weight_decay=0.1)
    for g in grads:
        p.grad = g.clone()
        opt.step()

    def ns(G):  # the quintic written out, in float64
        a, b, c = PUBLISHED_NS
        X = G.double().T  # tall: iterate on the wide transpose
        X = X / X.norm()
        for _ in range(5):
            X = a * X + b * (X @ X.T) @ X + c * (X @ X.T) @ (X @ X.T) @ X
        return X.T

    ref, buf = p0.double(), torch.zeros(48, 16, dtype=torch.float64)
    for g in grads:
        buf = 0.95 * buf + g.double()
        update = ns(g.double() + 0.95 * buf) * math.sqrt(48 / 16)
        ref = ref * (1 - 0.05 * 0.1) - 0.05 * update
    torch.testing.assert_close(p.detach().double(), ref, rtol=0, atol=1e-5)


def test_configure_optimizers_muon_splits_the_parameters_and_round_trips():
    model = tiny(**MODERN)
    opt = model.configure_optimizers(0.1, 1e-3, "cpu", optimizer="muon", muon_lr=0.02)
    muon, adamw = opt.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    assert in_muon == sorted(n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2)
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_adamw | set(in_muon) == set(names.values()) and not in_adamw & set(in_muon)
    assert {"transformer.wte.weight", "lm_head.weight"} <= in_adamw
    assert [g.get("lr_ratio", 1.0) for g in opt.param_groups] == [pytest.approx(20.0), 1.0, 1.0]

    def steps(model, opt, n):
        for i in range(n):
            idx = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(i))
            model.zero_grad()
            model(idx, idx)[1].backward()
            for g in opt.param_groups:
                g["lr"] = 1e-3 * g.get("lr_ratio", 1.0)
            opt.step()

    steps(model, opt, 2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    state = copy.deepcopy(opt.state_dict())  # as through a checkpoint file: no tensor shared with opt
    other = tiny(**MODERN)
    other.load_state_dict(saved)
    other_opt = other.configure_optimizers(0.1, 1e-3, "cpu", optimizer="muon", muon_lr=0.02)
    other_opt.load_state_dict(state)
    steps(model, opt, 2)
    steps(other, other_opt, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


# -----------------------------------------------------------------------------
# the schedule and the flags


def test_wsd_schedule():
    lr = lambda s: train_gpt2.get_lr(s, 1.0, 0.1, 10, 100, "wsd", 0.4)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)  # the same warmup as cosine
    assert lr(10) == lr(59) == lr(60) == 1.0  # stable until the last 40 of 100 steps
    assert lr(80) == pytest.approx(0.55)  # half way down the linear cooldown
    assert lr(99) == pytest.approx(0.1 + 0.9 / 40) and lr(100) == lr(1000) == 0.1
    assert train_gpt2.get_lr(50, 1.0, 0.1, 10, 100, "cosine", 0.4) == train_gpt2.get_lr(50, 1.0, 0.1, 10, 100)


def test_recipe_sets_every_component_and_flags_override():
    from train_args import parse_args

    a = parse_args(["--recipe", "modern", "--preset", "cpu", "--no-rotary", "--optimizer", "adamw"])
    assert (a.rotary, a.qk_norm, a.mlp_act, a.norm, a.tie_embeddings, a.zero_init, a.optimizer, a.lr_schedule) == \
        (False, True, "relu2", "rmsnorm", False, True, "adamw", "wsd")
    assert a.n_layer == 4  # the preset's, under the recipe
    d = parse_args([])
    assert (d.rotary, d.qk_norm, d.mlp_act, d.norm, d.tie_embeddings, d.zero_init, d.optimizer, d.lr_schedule) == \
        (False, False, "gelu", "layernorm", True, False, "adamw", "cosine")


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "modern", "--fsdp"], "--optimizer muon does not run under --fsdp yet"),
    (["--init_from", "gpt2", "--rotary", "--mlp_act", "relu2"], "--init_from gpt2 loads GPT-2's architecture, which --rotary --mlp_act relu2 would change"),
    (["--muon_lr", "0"], "--muon_lr must be a finite number > 0, got 0.0"),
    (["--cooldown_frac", "1.5"], "--cooldown_frac must be in [0, 1], got 1.5"),
    (["--lr_schedule", "wsd", "--max_steps", "3", "--cooldown_frac", "0.5"], "the cooldown over the last --cooldown_frac 0.5"),
])
def test_bad_recipe_flags(data_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        run(data_dir, tmp_path, "--total_batch_size", "128", "--max_steps", "4", *flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("train_gpt2.py: error: ") and err.count("\n") == 1, err
    assert message in err


# -----------------------------------------------------------------------------
# the whole recipe

# the first losses of `run(data_dir, ..., --recipe modern --total_batch_size 128 --max_steps 5)`:
# any change to a component's math, init, the split between Muon and AdamW or the schedule shows
MODERN_GOLDEN_LOSSES = [10.825839042663574, 10.726881980895996, 10.402175903320312, 10.042919158935547, 9.673837661743164]


def test_modern_golden_losses(data_dir, tmp_path):
    out = run(data_dir, tmp_path, "--recipe", "modern", "--total_batch_size", "128", "--max_steps", "5")
    print("losses:", out["losses"])
    torch.testing.assert_close(torch.tensor(out["losses"]), torch.tensor(MODERN_GOLDEN_LOSSES), rtol=0, atol=1e-4)


def test_modern_resume_is_exact(data_dir, tmp_path):
    flags = ["--recipe", "modern", "--total_batch_size", "128", "--max_steps", "8", "--eval_every", "3", "--save_every", "100"]
    straight = run(data_dir, tmp_path / "straight", *flags)
    first = run(data_dir, tmp_path / "split", *flags, "--stop_at_step", "4")
    second = run(data_dir, tmp_path / "split", *flags, "--resume")
    assert first["losses"] + second["losses"] == straight["losses"]
    for k, v in straight["model"].state_dict().items():
        torch.testing.assert_close(second["model"].state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_modern_run_evaluates_hellaswag_samples_and_loads_back(data_dir, tmp_path):
    """HellaSwag (through the untied lm_head) and sampling at each evaluation; the checkpoint loads
    back, as sample.py and hellaswag.py load it, into the same modern model."""
    import checkpoint

    hs = str(tmp_path / "hellaswag_val.jsonl")
    write_hellaswag(hs, 3)
    out = run(data_dir, tmp_path / "log", "--recipe", "modern", "--total_batch_size", "64", "--max_steps", "4",
              "--eval_every", "2", "--hellaswag", "--hellaswag_file", hs, "--num_samples", "1", "--sample_len", "4")
    evals = [e for e in read_log(tmp_path / "log") if "val_loss" in e]
    assert [e["hellaswag_n"] for e in evals] == [3, 3, 3] and all(len(e["samples"]) == 1 for e in evals)
    loaded = checkpoint.load_model(str(tmp_path / "log" / "model_00004.pt"))
    assert loaded.config == out["model"].config and loaded.config.rotary and not loaded.config.tie_embeddings
    idx = torch.randint(0, 50257, (1, 8))
    torch.testing.assert_close(loaded(idx)[0], out["model"].eval()(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adamw"], "--optimizer muon, this command says --optimizer adamw"),
    (["--no-rotary", "--lr_schedule", "cosine"], "--rotary True, --lr_schedule wsd, this command says --rotary False, --lr_schedule cosine"),
])
def test_resume_refuses_another_recipe(data_dir, tmp_path, capsys, flags, message):
    base = ["--recipe", "modern", "--total_batch_size", "64", "--eval_every", "100", "--max_steps", "4"]
    run(data_dir, tmp_path, *base, "--stop_at_step", "2")
    with pytest.raises(SystemExit) as e:
        run(data_dir, tmp_path, *base, *flags, "--resume")
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_modern_ddp_matches_single_process(data_dir, tmp_path):
    """2 gloo ranks against 1 process with 2 micro-steps: the same losses, val losses and weights."""
    flags = ["--data_dir", data_dir, *TINY, "--recipe", "modern", "--batch_size", "2", "--total_batch_size", "64",
             "--max_steps", "6", "--eval_every", "3", "--val_steps", "6"]
    proc = torchrun(2, *flags, "--log_dir", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run(data_dir, tmp_path / "single", *flags[2:])
    ddp_losses = train_losses(tmp_path / "ddp")
    print("largest DDP vs single-process loss difference:", max(abs(a - b) for a, b in zip(ddp_losses, single["losses"])))
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single["losses"]), rtol=0, atol=1e-5)
    val = lambda d: [e["val_loss"] for e in read_log(d) if "val_loss" in e]  # noqa: E731
    torch.testing.assert_close(torch.tensor(val(tmp_path / "ddp")), torch.tensor(val(tmp_path / "single")), rtol=0, atol=1e-5)
    ddp = torch.load(tmp_path / "ddp" / "model_00006.pt", weights_only=True)["model"]
    assert_weights_close(ddp, single["model"].state_dict())


def test_modern_architecture_under_fsdp_matches_one_process(data_dir, tmp_path):
    """--fsdp runs the modern network (its untied head included; with AdamW, as Muon is refused)
    with the same losses and weights as one process."""
    flags = ["--data_dir", data_dir, *TINY, "--recipe", "modern", "--optimizer", "adamw",
             "--batch_size", "2", "--total_batch_size", "64", "--max_steps", "4", "--eval_every", "100", "--save_every", "100"]
    proc = torchrun(2, *flags, "--fsdp", "--log_dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run(data_dir, tmp_path / "single", *flags[2:])
    torch.testing.assert_close(torch.tensor(train_losses(tmp_path / "fsdp")), torch.tensor(single["losses"]), rtol=0, atol=1e-5)
    assert train_gpt2.main(["--consolidate", str(tmp_path / "fsdp" / "model_00004")]) is None
    consolidated = torch.load(tmp_path / "fsdp" / "model_00004.pt", weights_only=True)
    assert consolidated["config"]["rotary"] and "transformer.wpe.weight" not in consolidated["model"]
    assert not consolidated["config"]["tie_embeddings"]
    assert not torch.equal(consolidated["model"]["lm_head.weight"], consolidated["model"]["transformer.wte.weight"])
    # within 1e-4 (measured: 4e-5, in the last block's c_fc; 1e-5 elsewhere): FSDP sums the gradients in
    # another order, and Adam turns rounding noise in the tiny early gradients of the matrices behind the
    # zero-initialised c_proj into updates of a fraction of the learning rate (1e-2)
    for k, v in single["model"].state_dict().items():
        torch.testing.assert_close(consolidated["model"][k], v, rtol=0, atol=1e-4, msg=k)
