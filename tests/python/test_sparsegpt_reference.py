"""SparseGPT against the authors' algorithm: SparseGPT.fasterprune of IST-DASLab/sparsegpt, rewritten
here in PyTorch (float32, the same damping, blocks of 128), run verbatim in its mask rule (it prunes
every score <= the sorted score at floor(sparsity * numel), one more per block than ours; see
prune/sparsegpt.h). The C++ side runs through the hidden Catch2 case "[.sparsegpt-export]"
(HessianAccumulator + sparsegpt_prune) on the same W and X. Asserted: the layer error ||WX - ŴX||²
of ours is within 2% of the reference's for 50% unstructured, 2:4 and 4:8, the masks follow their
pattern, and SparseGPT's error is at most 0.7x magnitude pruning's at the same sparsity pattern."""
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import catch2_binary, read_safetensors, write_safetensors
# mcompress's grid (rtn.h) in torch and the correlated, outlier-heavy test problem, as the GPTQ comparison uses them
from test_gptq_reference import Grid, add_batches, layer_error, make_problem  # add_batches: SparseGPT.add_batch is the same running average

# Ours vs the reference: the same algorithm in another float32 summation order (H from another GEMM,
# the lazy update in row loops), plus one extra pruned weight per block of 128 x 256 in the
# reference (a 1/16384 change of sparsity); 2% is the brief's bound.
REL_TOL = 0.02
# SparseGPT vs magnitude pruning on correlated, outlier-heavy inputs: the paper's gains are large;
# demand at most 0.7x the error.
MAGNITUDE_FACTOR = 0.7


# --- the authors' algorithm ----------------------------------------------------------------------
def fasterprune(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01, quantizer=None):
    W, H = W.clone().float(), H.clone()
    if quantizer is not None:  # per channel, fitted on the whole W (the reference's find_params)
        quantizer.find_params(W)
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    losses = torch.zeros(W.shape[0])
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1, Err1, Losses1 = torch.zeros_like(W1), torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            if quantizer is not None:
                q = quantizer.quantize(q.unsqueeze(1)).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, float(losses.sum())


def magnitude(W, sparsity, prunen=0, prunem=0):
    """The baseline at the same pattern: smallest |w| over the layer, or per row and group of M."""
    a = W.abs()
    if prunen:
        g = a.reshape(W.shape[0], -1, prunem)
        idx = torch.topk(g, prunen, dim=2, largest=False)[1]
        keep = torch.ones_like(g, dtype=torch.bool).scatter_(2, idx, False)
        return W * keep.reshape(W.shape)
    k = int(W.numel() * sparsity)
    thresh = torch.sort(a.flatten())[0][k]
    return W * (a >= thresh)
# ------------------------------------------------------------------------------------------------


def fasterprune_mask(ref_w, W, bits):
    """The reference's mask from its output: zeros (a survivor may also round to 0 when quantized, so
    with bits only an approximation, used for the printed mismatch)."""
    return ref_w != 0


@pytest.fixture(scope="module")
def problem():
    return make_problem()


# sparsity, prune_n, prune_m, bits (0: pruning only; else joint, asymmetric per channel as the
# reference's quantizer)
CASES = [(0.5, 0, 0, 0), (0, 2, 4, 0), (0, 4, 8, 0), (0.5, 0, 0, 4), (0, 2, 4, 4)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ("%d:%d" % (c[1], c[2]) if c[1] else "unstructured-%g" % c[0])
                         + ("-w%d" % c[3] if c[3] else ""))
def test_layer_error_matches_authors_algorithm(problem, case, tmp_path):
    binary = catch2_binary()
    if not os.path.exists(binary):
        pytest.skip(f"test binary not built at {binary} (set MC_TESTS_BIN)")
    W, X = problem
    sparsity, n, m, bits = case
    meta = {"sparsity": str(sparsity), "prune_n": str(n), "prune_m": str(m), "bits": str(bits), "symmetric": "0",
            "group_size": "0"}
    write_safetensors(tmp_path / "input.safetensors", {"W": W.numpy(), "X": X.numpy()}, meta)
    p = subprocess.run([binary, "[sparsegpt-export]"], env={**os.environ, "MC_SPARSEGPT_EXPORT": str(tmp_path)},
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    res, out_meta = read_safetensors(tmp_path / "output.safetensors")

    H = add_batches(X, 256)
    assert np.allclose(res["H"], H.numpy(), rtol=0, atol=1e-5 * float(H.abs().max()))
    ours_w = torch.from_numpy(res["weight"].copy())
    mask = torch.from_numpy(res["mask"].copy()).bool()
    assert bool((ours_w[~mask] == 0).all())
    if n:  # every group of m columns of every row has exactly n pruned
        assert bool(((~mask).reshape(W.shape[0], -1, m).sum(2) == n).all())
    else:  # exactly floor(sparsity * numel) per block of 128 columns
        for i1 in range(0, W.shape[1], 128):
            blk = ~mask[:, i1:i1 + 128]
            assert int(blk.sum()) == int(sparsity * blk.numel())

    if bits:  # survivors on the grid: codes reproduce the weights, pruned entries carry the zero point
        deq = (res["codes"].astype(np.float32) - res["zeros"]) * res["scales"]
        assert np.array_equal(deq, res["weight"])
        assert np.array_equal(res["codes"][~mask.numpy()], np.broadcast_to(res["zeros"], W.shape)[~mask.numpy()])
    ref_w, ref_loss = fasterprune(W, H, sparsity, n, m, quantizer=Grid(bits, False) if bits else None)
    ours = layer_error(W, ours_w, X)
    ref = layer_error(W, ref_w, X)
    base_w = magnitude(W, sparsity, n, m)
    if bits:  # the baseline then quantized by RTN on the same grid (a zero stays zero)
        g = Grid(bits, False)
        g.find_params(base_w)
        base_w = g.quantize(base_w)
    base = layer_error(W, base_w, X)
    ref_mask = fasterprune_mask(ref_w, W, bits)
    print(f"{case}: ours {ours:.6g} ref {ref:.6g} ratio {ours / ref:.5f} ours/magnitude {ours / base:.3f} "
          f"loss {float(out_meta['loss']):.6g} vs {ref_loss:.6g} mask mismatch "
          f"{float((mask != ref_mask).float().mean()):.2e}")
    assert abs(ours - ref) <= REL_TOL * ref, (ours, ref)
    assert abs(float(out_meta["loss"]) - ref_loss) <= REL_TOL * ref_loss
    assert ours <= MAGNITUDE_FACTOR * base, (ours, base)
