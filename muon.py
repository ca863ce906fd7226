"""
Muon (Keller Jordan, 2024): SGD with Nesterov momentum whose update of each weight matrix is
replaced by the nearest semi-orthogonal matrix, computed with a few Newton-Schulz iterations.
An orthogonalised update moves the matrix by the same amount in every direction its gradient
spans, instead of mostly along the few directions that dominate the gradient. It is meant for the
hidden matrices of a network; embeddings, the head and vectors stay with AdamW (model.py's
configure_optimizers builds both, in one MuonWithAdamW).
"""

import torch

# the quintic's coefficients from modded-nanogpt: chosen to push every singular value of the
# normalised matrix from (0, 1] towards 1 as fast as possible in 5 steps, at the price of landing
# anywhere in about [0.68, 1.2] rather than exactly on 1, which training does not mind (singular
# values below about 1e-3 of the largest need more steps to get there)
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G, steps=5):
    """An approximately semi-orthogonal matrix with G's singular vectors: U V^T of G = U S V^T, each
    singular value mapped near 1. The odd polynomial p(X) = aX + b(XX^T)X + c(XX^T)^2 X acts on each
    singular value alone, s -> a s + b s^3 + c s^5, so iterating it moves S without touching U, V."""
    a, b, c = NS_COEFFS
    # float32 (modded-nanogpt iterates in bfloat16 on GPUs): five small matmuls per matrix cost little next
    # to the forward and backward, and a CPU test can recompute them (CUDA uses TF32 where it is enabled)
    X = G.float()
    transposed = X.size(0) > X.size(1)
    if transposed:  # iterate on the wide orientation: X X^T is then the smaller square
        X = X.T
    X = X / (X.norm() + 1e-7)  # Frobenius norm >= the largest singular value: all of them now <= 1
    for _ in range(steps):
        A = X @ X.T  # (rows, rows)
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """For 2-D parameters (rows, cols) = (fan-out, fan-in) only. The step is lr times a matrix
    whose entries have an RMS of about 1/sqrt(cols), whatever the gradient's scale."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)  # buf = mu * buf + g
                # Nesterov: step along the gradient plus the momentum it will add to (as torch.optim.SGD)
                update = g.add(buf, alpha=mu) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_steps"])
                # a tall matrix (rows > cols) has orthonormal columns of RMS 1/sqrt(rows) per entry,
                # smaller than a wide one's 1/sqrt(cols); max(1, rows/cols)**0.5 evens that out
                update *= max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])  # decoupled, as AdamW's
                p.add_(update.to(p.dtype), alpha=-lr)


class MuonWithAdamW:
    """Muon and AdamW stepped as one optimizer: param_groups lists both's groups (the same dicts,
    so a learning rate set on one reaches its optimizer) and the checkpoint holds both states.
    Each group's lr_ratio is its learning rate over the schedule's: train_gpt2.py sets every
    group's lr to the scheduled lr times its lr_ratio, so one schedule drives both."""

    def __init__(self, muon, adamw):
        self.optimizers = [muon, adamw]

    @property
    def param_groups(self):
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.optimizers[0].state_dict(), "adamw": self.optimizers[1].state_dict()}

    def load_state_dict(self, state):
        self.optimizers[0].load_state_dict(state["muon"])
        self.optimizers[1].load_state_dict(state["adamw"])
