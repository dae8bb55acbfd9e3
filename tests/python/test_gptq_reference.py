"""GPTQ against the authors' algorithm: fasterquant of IST-DASLab/gptq (gptq.py + quant.py), rewritten
here in PyTorch with mcompress's grid (rtn.h: fp16 scales rounded up, symmetric zero 2^(b-1), ranges
holding 0) so the comparison is apples to apples. The C++ side runs through the hidden Catch2 case
"[.gptq-export]" (HessianAccumulator + gptq_quantize) on the same W and X. Asserted: the layer error
||WX - ŴX||² of ours is within 2% of the reference's, and far below RTN's at 3 and 4 bits."""
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import catch2_binary, read_safetensors, write_safetensors

# Ours vs the reference: the same algorithm in a different float32 summation order (lazy blocks are
# the same in both, but H comes from a different GEMM and the grid rounding differs in ties), so
# individual codes flip and the errors differ by noise well under 1%; 2% is the brief's bound. Where
# a group of 32 starts inside a block of 128 the reference fits it on stale weights (in-block updates
# pending), ours on current ones, which can only move ours by a little.
REL_TOL = 0.02
# GPTQ vs RTN on correlated, outlier-heavy inputs: GPTQ's published gains are 2-10x in layer error;
# demand at least 2x.
RTN_FACTOR = 0.5


# --- mcompress's grid (rtn.h), in torch ---------------------------------------------------------
def up16(s):
    h = s.half()
    below = (h.float() < s).to(torch.int16)
    return (h.view(torch.int16) + below).view(torch.float16).float()


class Grid:
    """Quantizer.find_params(weight=True) with perchannel=True, with mcompress's grid."""

    def __init__(self, bits, sym):
        self.bits, self.sym, self.maxq = bits, sym, 2 ** bits - 1

    def find_params(self, x):
        inv_maxq = torch.tensor(1.0 / self.maxq, dtype=torch.float32)
        if self.sym:
            scale = x.abs().amax(1) * (2 * inv_maxq)
        else:
            lo, hi = x.amin(1).clamp(max=0), x.amax(1).clamp(min=0)
            scale = (hi - lo) * inv_maxq
        scale = up16(scale)
        scale[scale == 0] = 1
        self.scale = scale.unsqueeze(1)
        if self.sym:
            self.zero = torch.full_like(self.scale, 2 ** (self.bits - 1))
        else:
            self.zero = torch.clamp(torch.round(-lo.unsqueeze(1) * (1 / self.scale)), 0, self.maxq)

    def quantize(self, x):
        q = torch.clamp(torch.round(x * (1 / self.scale) + self.zero), 0, self.maxq)
        return self.scale * (q - self.zero)


# --- the authors' algorithm ----------------------------------------------------------------------
def add_batches(X, batch):
    """GPTQ.add_batch's running average over row batches: H = 2/n Σ x xᵀ."""
    H, n = torch.zeros(X.shape[1], X.shape[1]), 0
    for b in range(0, X.shape[0], batch):
        inp = X[b:b + batch].t()
        tmp = inp.shape[1]
        H *= n / (n + tmp)
        n += tmp
        inp = math.sqrt(2 / n) * inp
        H += inp.matmul(inp.t())
    return H


def fasterquant(W, H, bits, sym, groupsize, actorder=False, static_groups=False, blocksize=128, percdamp=.01):
    W, H = W.clone().float(), H.clone()
    columns = W.shape[1]
    quantizer = Grid(bits, sym)
    quantizer.find_params(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        groups = []
        for i in range(0, columns, groupsize):
            g = Grid(bits, sym)
            g.find_params(W[:, i:i + groupsize])
            groups.append(g)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if groupsize > 0:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // groupsize]
            q = quantizer.quantize(w.unsqueeze(1)).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def rtn(W, bits, sym, groupsize):
    g, Q, gs = Grid(bits, sym), torch.empty_like(W), groupsize if groupsize > 0 else W.shape[1]
    for i in range(0, W.shape[1], gs):
        g.find_params(W[:, i:i + gs])
        Q[:, i:i + gs] = g.quantize(W[:, i:i + gs])
    return Q
# ------------------------------------------------------------------------------------------------


def make_problem(out=256, inn=512, n=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated channels (a random mixing plus a shared low-rank part) and heavy-tailed outlier channels
    mix = torch.randn(inn, inn, generator=g) / math.sqrt(inn) + torch.eye(inn)
    low = torch.randn(n, 8, generator=g) @ torch.randn(8, inn, generator=g)
    X = torch.randn(n, inn, generator=g) @ mix + low
    gain = torch.ones(inn)
    gain[torch.randperm(inn, generator=g)[:inn // 50]] = 20.0
    X *= gain
    W = torch.randn(out, inn, generator=g) * 0.02
    return W, X


def layer_error(W, Q, X):
    X = X.double()
    return float(((X @ W.double().t() - X @ Q.double().t()) ** 2).sum())


@pytest.fixture(scope="module")
def problem():
    return make_problem()


CASES = [  # bits, symmetric, group_size, act_order, static_groups
    (4, 1, 128, 0, 0),
    (3, 1, 128, 0, 0),
    (4, 0, 128, 0, 0),
    (3, 0, 0, 0, 0),
    (4, 1, 0, 1, 0),
    (4, 1, 32, 0, 0),
    (4, 1, 128, 1, 0),
    (3, 1, 64, 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b%d-%s-g%d%s%s" % (
    c[0], "sym" if c[1] else "asym", c[2], "-act" if c[3] else "", "-static" if c[4] else ""))
def test_layer_error_matches_authors_algorithm(problem, case, tmp_path):
    binary = catch2_binary()
    if not os.path.exists(binary):
        pytest.skip(f"test binary not built at {binary} (set MC_TESTS_BIN)")
    W, X = problem
    bits, sym, gs, act, static = case
    meta = {"bits": str(bits), "symmetric": str(sym), "group_size": str(gs), "act_order": str(act),
            "static_groups": str(static)}
    write_safetensors(tmp_path / "input.safetensors", {"W": W.numpy(), "X": X.numpy()}, meta)
    p = subprocess.run([binary, "[gptq-export]"], env={**os.environ, "MC_GPTQ_EXPORT": str(tmp_path)},
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    res, out_meta = read_safetensors(tmp_path / "output.safetensors")

    H = add_batches(X, 256)
    # our HessianAccumulator computes the same running average (float32 summation order differs)
    assert np.allclose(res["H"], H.numpy(), rtol=0, atol=1e-5 * float(H.abs().max()))
    # the exported codes/scales/g_idx reproduce the dequantized weights
    codes = res["codes"].astype(np.float32)
    g_idx = res["g_idx"].astype(np.int64)
    deq = (codes - res["zeros"][:, g_idx]) * res["scales"][:, g_idx]
    assert np.array_equal(deq, res["dequant"])
    assert np.all(res["scales"].astype(np.float16).astype(np.float32) == res["scales"])

    ours = layer_error(W, torch.from_numpy(res["dequant"].copy()), X)
    ref = layer_error(W, fasterquant(W, H, bits, bool(sym), gs, bool(act), bool(static)), X)
    base = layer_error(W, rtn(W, bits, bool(sym), gs), X)
    # our RTN baseline is the Python grid's RTN (same grid, checks the grid port)
    assert abs(layer_error(W, torch.from_numpy(res["rtn"].copy()), X) - base) <= 1e-3 * base
    print(f"{case}: ours {ours:.6g} ref {ref:.6g} ratio {ours / ref:.4f} rtn/ours {base / ours:.2f}")
    assert abs(ours - ref) <= REL_TOL * ref, (ours, ref)
    assert ours < RTN_FACTOR * base, (ours, base)
