"""mcompress's array API against numpy reference implementations written here: the RTN grid (rtn.h),
GPTQ's column loop with the inverse-Hessian Cholesky factor (the authors' fasterquant, one column at a
time), SparseGPT's block loop (fasterprune), Wanda's row mask, N:M masks, the packed bit layout; plus
zero-copy input, torch in/out and the errors bad inputs raise."""
import numpy as np
import pytest

import mcompress
from mcompress import _mcompress

# GPTQ / SparseGPT references run in float64, the C++ loop in float32 with a different summation order:
# a code sitting within float32 noise of a rounding boundary can flip, and a flip shifts later columns by
# less than a step. Measured on this layer: 0 flips without act_order, 0.09% with it (layer error +0.009%);
# the bounds leave 5x room for other BLAS builds.
CODE_FLIP_MAX = 0.005     # fraction of codes allowed to differ from the float64 reference
LAYER_ERR_RTOL = 0.005    # relative difference of ||(W - Q) X||² allowed
# RTN: the same float32 formula on both sides (w * (1/scale) + zero, round half to even); only a fused
# multiply-add in the C++ build could move a value exactly at .5: no flips expected on random data.
RTN_CODE_FLIP_MAX = 1e-4
# Hessian: float32 GEMM vs float64 numpy, entries O(1) summed over 512 rows.
HESSIAN_RTOL, HESSIAN_ATOL = 1e-5, 1e-5
# SparseGPT: mask chosen per block from float32 scores; near-ties between a pruned and a kept weight can
# swap (measured: none on this layer, unstructured and 2:4).
MASK_FLIP_MAX = 0.005
# AWQ's scale search: tr(D H Dᵀ) summed by a float32 matmul in C++, float64 here; the scales' pow runs in
# float32 on both sides but through different libm/vector code (an ulp or two apart), which can also flip
# an RTN code sitting on a rounding boundary of W s. Errors agree to ~1e-6 in practice.
AWQ_ERR_RTOL = 1e-4
AWQ_SCALE_RTOL = 1e-5
# AWQ's clip search: a (row, group) whose two best ratios are within float32 noise of each other can pick
# the other one (its error differs by as little); none measured on this layer.
CLIP_FLIP_MAX = 0.01


def rng(seed=0):
    return np.random.default_rng(seed)


def up16(s):
    """Rounds float32 values up to the next float16 value (rtn.h's up16)."""
    s = np.asarray(s, np.float32)
    h = s.astype(np.float16)
    below = h.astype(np.float32) < s
    h = np.where(below, np.nextafter(h, np.float16(np.inf)), h)
    return h.astype(np.float32)


def grid_ref(w, bits, sym):
    """RTN's per-row grid of w [out, cols]: (scale, zero) float32 [out, 1]."""
    maxq = 2 ** bits - 1
    if sym:
        scale = up16(np.abs(w).max(1) * np.float32(2.0 / maxq))
        scale[scale == 0] = 1
        zero = np.full_like(scale, 2 ** (bits - 1))
    else:
        lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
        scale = up16((hi - lo) * np.float32(1.0 / maxq))
        scale[scale == 0] = 1
        zero = np.clip(np.round(-lo * (np.float32(1) / scale)), 0, maxq).astype(np.float32)
    return scale[:, None].astype(np.float32), zero[:, None].astype(np.float32)


def round_ref(w, scale, zero, bits):
    q = np.clip(np.round(w.astype(np.float32) * (np.float32(1) / scale) + zero), 0, 2 ** bits - 1)
    return q, (q - zero) * scale


def rtn_ref(W, bits, group_size, sym):
    out, cols = W.shape
    gs = group_size if group_size > 0 else cols
    codes, deq = np.zeros_like(W), np.zeros_like(W)
    for c in range(0, cols, gs):
        s, z = grid_ref(W[:, c:c + gs], bits, sym)
        codes[:, c:c + gs], deq[:, c:c + gs] = round_ref(W[:, c:c + gs], s, z, bits)
    return codes.astype(np.uint8), deq


def gptq_ref(W, H, bits, group_size, sym, act_order=False, damp=0.01):
    """The authors' fasterquant, one column at a time (no lazy blocks), in float64, with rtn.h's grid;
    dynamic groups fitted on the current (error-compensated) weights when their first column is reached."""
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    out, n = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * np.mean(np.diag(H)) * np.eye(n)
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H⁻¹
    gs = group_size if group_size > 0 else n
    codes, Q = np.zeros((out, n)), np.zeros((out, n))
    if group_size == 0:
        scale, zero = grid_ref(W.astype(np.float32), bits, sym)
    for i in range(n):
        if group_size > 0 and i % gs == 0:
            scale, zero = grid_ref(W[:, i:i + gs].astype(np.float32), bits, sym)
        q, Q[:, i] = (a[:, 0] for a in round_ref(W[:, i:i + 1].astype(np.float32), scale, zero, bits))
        codes[:, i] = q
        err = (W[:, i] - Q[:, i]) / Hinv[i, i]
        W[:, i + 1:] -= np.outer(err, Hinv[i, i + 1:])
    inv = np.argsort(perm)
    return codes[:, inv].astype(np.uint8), Q[:, inv].astype(np.float32)


def sparsegpt_ref(W, H, sparsity=0.5, n=0, m=0, block=128, damp=0.01):
    """fasterprune without quantization: mask per block (exactly floor(sparsity * out * B) pruned) or
    N:M per row on the current weights, OBS update through Hinv."""
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    out, cols = W.shape
    H += damp * np.mean(np.diag(H)) * np.eye(cols)
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    mask = np.ones_like(W, bool)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].copy(), Hinv[i1:i2, i1:i2]
        d = np.diag(Hinv1)
        prune1 = np.zeros_like(W1, bool)
        if n == 0:
            tmp = (W1 ** 2 / d[None, :] ** 2).astype(np.float32).ravel()
            k = int(np.floor(sparsity * tmp.size))
            prune1.ravel()[np.argsort(tmp, kind="stable")[:k]] = True
        Err1 = np.zeros_like(W1)
        for j in range(i2 - i1):
            if n and j % m == 0:
                tmp = (W1[:, j:j + m] ** 2 / d[None, j:j + m] ** 2).astype(np.float32)
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :n]
                np.put_along_axis(prune1[:, j:j + m], idx, True, axis=1)
            w = W1[:, j]
            q = np.where(prune1[:, j], 0.0, w)
            err = (w - q) / d[j]
            W1[:, j] = q
            W1[:, j + 1:] -= np.outer(err, Hinv1[j, j + 1:])
            Err1[:, j] = err
        W[:, i1:i2], mask[:, i1:i2] = W1, ~prune1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.astype(np.float32), mask


def drop_smallest(score, k):
    keep = np.ones(score.shape, bool)
    if k > 0:
        np.put_along_axis(keep, np.argsort(score, axis=-1, kind="stable")[..., :k], False, axis=-1)
    return keep


def pack_ref(codes, bits):
    """Code k of a row at bits [k*bits, (k+1)*bits) of the row's bytes as one little-endian number."""
    rows = []
    for row in codes:
        b = ((row[:, None].astype(np.uint16) >> np.arange(bits)) & 1).astype(np.uint8).ravel()
        rows.append(np.packbits(b, bitorder="little"))
    return np.stack(rows)


def layer_err(W, Q, X):
    return float(np.sum(((W - Q).astype(np.float64) @ X.T.astype(np.float64)) ** 2))


@pytest.fixture(scope="module")
def layer():
    """A layer with correlated, outlier-heavy inputs (the case GPTQ exists for)."""
    r = rng(1)
    X = r.standard_normal((1024, 128)).astype(np.float32) @ r.standard_normal((128, 128)).astype(np.float32) * 0.3
    X[:, r.choice(128, 4, replace=False)] *= 8
    W = r.standard_normal((64, 128)).astype(np.float32)
    return W, X.astype(np.float32), mcompress.hessian(X)


def test_hessian_matches_numpy(layer):
    _, X, H = layer
    ref = 2.0 / X.shape[0] * X.astype(np.float64).T @ X.astype(np.float64)
    np.testing.assert_allclose(H, ref, rtol=HESSIAN_RTOL, atol=HESSIAN_ATOL * np.abs(ref).max())
    acc = mcompress.Hessian(128).add(X[:500]).add(X[500:])  # running average over batches
    np.testing.assert_allclose(acc.H, ref, rtol=HESSIAN_RTOL, atol=HESSIAN_ATOL * np.abs(ref).max())
    np.testing.assert_allclose(acc.mean_abs, np.abs(X).mean(0), rtol=1e-5)
    assert acc.samples == 1024


@pytest.mark.parametrize("bits,group_size,sym", [(4, 32, True), (3, 32, False), (8, 0, True), (4, 48, False)])
def test_rtn_matches_grid(bits, group_size, sym):
    W = rng(2).standard_normal((32, 128)).astype(np.float32)
    q = mcompress.rtn(W, bits=bits, group_size=group_size, sym=sym)
    codes, deq = rtn_ref(W, bits, group_size, sym)
    assert q.codes.dtype == np.uint8 and q.codes.shape == W.shape
    assert np.mean(q.codes != codes) <= RTN_CODE_FLIP_MAX
    np.testing.assert_array_equal(q.scales.astype(np.float16).astype(np.float32), q.scales)  # fp16-exact
    g = np.arange(128) // (group_size or 128)
    np.testing.assert_array_equal(q.weight, (q.codes.astype(np.float32) - q.zeros[:, g]) * q.scales[:, g])
    np.testing.assert_allclose(q.weight, deq, atol=float(q.scales.max()) * 1.001 * (np.mean(q.codes != codes) > 0))


@pytest.mark.parametrize("bits,group_size,act_order,sym", [(4, 32, False, True), (3, 0, False, False),
                                                           (4, 32, True, True)])
def test_gptq_matches_reference(layer, bits, group_size, act_order, sym):
    W, X, H = layer
    q = mcompress.gptq(W, H, bits=bits, group_size=group_size, act_order=act_order, sym=sym)
    codes, Q = gptq_ref(W, H, bits, group_size, sym, act_order)
    assert np.mean(q.codes != codes) <= CODE_FLIP_MAX
    ours, ref = layer_err(W, q.weight, X), layer_err(W, Q, X)
    assert abs(ours - ref) <= LAYER_ERR_RTOL * ref
    assert ours < layer_err(W, mcompress.rtn(W, bits, group_size, sym).weight, X)
    # the result is self-consistent: weight = (codes - zeros[g]) * scales[g] over g_idx
    g = q.g_idx.astype(np.int64)
    np.testing.assert_array_equal(q.weight, (q.codes.astype(np.float32) - q.zeros[:, g]) * q.scales[:, g])
    assert sorted(q.perm.tolist()) == list(range(128))
    assert q.plain_groups == (not act_order or group_size == 0)


def test_sparsegpt_matches_reference(layer):
    W, X, H = layer
    p = mcompress.sparsegpt(W, H, sparsity=0.5, block_size=64)
    Wr, mask = sparsegpt_ref(W, H, 0.5, block=64)
    assert np.mean(p.mask != mask) <= MASK_FLIP_MAX
    assert np.all(p.weight[~p.mask] == 0) and p.mask.mean() == 0.5
    assert abs(layer_err(W, p.weight, X) - layer_err(W, Wr, X)) <= LAYER_ERR_RTOL * layer_err(W, Wr, X)
    # 2:4 and joint 4-bit quantization
    p = mcompress.sparsegpt(W, H, prune_n=2, prune_m=4)
    Wr, mask = sparsegpt_ref(W, H, n=2, m=4)
    assert np.all((~p.mask).reshape(64, -1, 4).sum(-1) == 2)
    assert np.mean(p.mask != mask) <= MASK_FLIP_MAX
    pq = mcompress.sparsegpt(W, H, prune_n=2, prune_m=4, bits=4, group_size=32)
    assert pq.codes.dtype == np.uint8 and np.all(pq.weight[~pq.mask] == 0)
    g = np.arange(128) // 32
    np.testing.assert_array_equal(pq.weight, (pq.codes.astype(np.float32) - pq.zeros[:, g]) * pq.scales[:, g])
    # the OBS update beats plain magnitude pruning at the same pattern
    assert layer_err(W, p.weight, X) < layer_err(W, mcompress.magnitude(W, prune_n=2, prune_m=4).weight, X)


def test_wanda_and_masks(layer):
    W, X, _ = layer
    norm = np.sqrt((X.astype(np.float64) ** 2).sum(0)).astype(np.float32)
    score = np.abs(W) * norm[None, :]
    p = mcompress.wanda(W, X, sparsity=0.5)
    np.testing.assert_array_equal(p.mask, drop_smallest(score, 64))
    np.testing.assert_array_equal(p.weight, W * p.mask)
    np.testing.assert_array_equal(mcompress.wanda(W, norm, sparsity=0.5).mask, p.mask)  # norms or X
    sum_sq = mcompress.Hessian(128).add(X).sum_sq  # or Σ x² from an accumulator
    np.testing.assert_array_equal(mcompress.wanda(W, sum_sq=sum_sq, sparsity=0.5).mask, p.mask)
    p24 = mcompress.wanda(W, norm, prune_n=2, prune_m=4)
    np.testing.assert_array_equal(p24.mask, drop_smallest(score.reshape(64, 32, 4), 2).reshape(64, 128))
    np.testing.assert_array_equal(mcompress.nm_mask(score, 2, 4), p24.mask)
    np.testing.assert_array_equal(mcompress.nm_mask(np.array([[4., 1., 3., 2.]]), 2, 4), [[True, False, True, False]])
    np.testing.assert_array_equal(mcompress.row_mask(score, 0.25), drop_smallest(score, 32))
    mag = mcompress.magnitude(W, sparsity=0.3)
    k = int(np.floor(0.3 * W.size))
    assert (~mag.mask).sum() == k and np.abs(W[~mag.mask]).max() <= np.abs(W[mag.mask]).min()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_layout(bits):
    codes = rng(bits).integers(0, 2 ** bits, (5, 37)).astype(np.uint8)
    packed = mcompress.pack_codes(codes, bits)
    np.testing.assert_array_equal(packed, pack_ref(codes, bits))
    np.testing.assert_array_equal(mcompress.unpack_codes(packed, 37, bits), codes)


def test_pack_int4_nibbles():
    np.testing.assert_array_equal(mcompress.pack_int4(np.array([[1, 2, 3]], np.uint8)), [[0x21, 0x03]])
    c = rng(3).integers(0, 16, (4, 64)).astype(np.uint8)
    np.testing.assert_array_equal(mcompress.unpack_int4(mcompress.pack_int4(c)), c)
    with pytest.raises(mcompress.InputError):
        mcompress.pack_int4(np.array([[16]], np.uint8))


def awq_search_ref(weights, x_mean_abs, H, bits, group_size, sym, grid=20):
    """AWQ's scale search as awq.h defines it: for alpha = i / grid, s = max(mean|x|^alpha, 1e-4) / sqrt(max s
    * min s) (float32, as the C++), error Σ tr(D H Dᵀ) with D = W - RTN(W s) / s (float64 here).
    Returns (errors per alpha, the scales of each alpha)."""
    errors, scales = [], []
    for i in range(grid):
        s = np.maximum(np.power(x_mean_abs.astype(np.float32), np.float32(i / grid)), np.float32(1e-4))
        s = (s / np.float32(np.sqrt(float(s.max()) * float(s.min())))).astype(np.float32)
        err = 0.0
        for w in weights:
            D = (w.astype(np.float64) - rtn_ref((w * s[None, :]).astype(np.float32), bits, group_size, sym)[1] / s)
            err += float(np.sum((D @ H.astype(np.float64)) * D))
        errors.append(err)
        scales.append(s)
    return np.array(errors), scales


def awq_clip_ref(W, H, bits, group_size, sym):
    """AWQ's clip search as awq.h defines it: per (row, group) the first ratio r in 1.00, 0.95, ..., 0.55
    with the least d H_gg dᵀ, d = w_g - RTN(clamp(w_g, r lo, r hi))_g, lo/hi the group's range (symmetric:
    ±max|w|). Returns (W clamped to the chosen ranges, the chosen ratio per (row, group))."""
    out, cols = W.shape
    G = cols // group_size
    Wg = W.reshape(out, G, group_size)
    if sym:
        hi = np.abs(Wg).max(-1, keepdims=True)
        lo = -hi
    else:
        hi, lo = np.maximum(Wg.max(-1, keepdims=True), 0), np.minimum(Wg.min(-1, keepdims=True), 0)
    Hb = np.stack([H[g * group_size:(g + 1) * group_size, g * group_size:(g + 1) * group_size] for g in range(G)])
    best_err, best_r = None, np.ones((out, G, 1), np.float32)
    for i in range(10):
        r = np.float32(1.0 - 0.05 * i)
        Wc = np.minimum(np.maximum(Wg, lo * r), hi * r)
        Q = rtn_ref(Wc.reshape(out, cols), bits, group_size, sym)[1].reshape(out, G, group_size)
        D = (Wg - Q).astype(np.float64)
        err = np.einsum("ogi,gij,ogj->og", D, Hb.astype(np.float64), D)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_r = np.where(better[..., None], r, best_r)
    return np.minimum(np.maximum(Wg, lo * best_r), hi * best_r).reshape(out, cols), best_r[..., 0]


def test_awq_scales_match_the_search_by_hand(layer):
    W, X, H = layer
    acc = mcompress.Hessian(128).add(X)
    weights = [W, W[:16] * 2]
    a = mcompress.awq_scales(weights, acc.mean_abs, acc.H, bits=3, group_size=32)
    assert a.scales.shape == (128,) and a.scales.dtype == np.float32 and np.all(a.scales > 0)
    errors, scales = awq_search_ref(weights, acc.mean_abs, acc.H, 3, 32, True)
    np.testing.assert_allclose(a.errors, errors, rtol=AWQ_ERR_RTOL)
    best = int(np.argmin(errors))
    # the layer's outlier channels make scaling pay: the search must move off alpha 0 (plain RTN), and the
    # runner-up is far enough behind that float32 noise cannot swap them
    assert best > 0 and np.sort(errors)[1] - errors[best] > 10 * AWQ_ERR_RTOL * errors[best]
    assert a.alpha == pytest.approx(best / 20)
    np.testing.assert_allclose(a.scales, scales[best], rtol=AWQ_SCALE_RTOL)


@pytest.mark.parametrize("sym", [True, False])
def test_awq_clip_matches_the_search_by_hand(layer, sym):
    W, X, H = layer
    clipped = mcompress.awq_clip(W, H, bits=3, group_size=32, sym=sym)
    ref, ratio = awq_clip_ref(W, H, 3, 32, sym)
    assert np.mean(ratio < 1) > 0.1  # a clip that does nothing would fail below
    same = np.all((clipped == ref).reshape(64, 4, 32), -1)
    assert np.mean(~same) <= CLIP_FLIP_MAX


def test_zero_copy_inputs_and_torch_outputs():
    a = np.ones((64, 32), np.float32)
    addr, copied = _mcompress._input_address(a)
    assert addr == a.ctypes.data and not copied
    addr, copied = _mcompress._input_address(a.astype(np.float64))
    assert copied
    addr, copied = _mcompress._input_address(a.T)  # not C-contiguous: one conversion copy
    assert copied
    torch = pytest.importorskip("torch")
    t = torch.randn(64, 32)
    assert _mcompress._input_address(mcompress._arrays._np(t)) == (t.data_ptr(), False)
    H = torch.eye(32) * 2
    q = mcompress.gptq(t, H, bits=4, group_size=16)
    assert isinstance(q.weight, torch.Tensor) and q.weight.dtype == torch.float32 and q.codes.dtype == torch.uint8
    np.testing.assert_array_equal(q.weight.numpy(), mcompress.gptq(t.numpy(), H.numpy(), bits=4, group_size=16).weight)


@pytest.mark.parametrize("call,message", [
    (lambda W, H: mcompress.gptq(W, H[:10]), "H must be [in, in]"),
    (lambda W, H: mcompress.gptq(W[0], H), "expected a 2-D array"),
    (lambda W, H: mcompress.rtn(W, bits=9), "bits 9 outside 2..8"),
    (lambda W, H: mcompress.gptq(W, H, group_size=-1), "group_size -1 (per tensor) is not supported"),
    (lambda W, H: mcompress.sparsegpt(W, H, prune_n=2, prune_m=3), "multiple of 3"),
    (lambda W, H: mcompress.awq_scales([W], np.ones(7, np.float32), H), "mean |x| gives 7 input channels"),
    (lambda W, H: mcompress.gptq(np.array([["a"]]), H), "expected a numeric array"),
    (lambda W, H: mcompress.sparsegpt(W, H, sparsity=1.5), "sparsity"),
    (lambda W, H: mcompress.nm_mask(W, 3, 2), "N:M pattern 3:2"),
    (lambda W, H: mcompress.wanda(W, np.ones(7, np.float32)), "x_norm has 7 entries"),
    (lambda W, H: mcompress.unpack_codes(np.zeros((2, 3), np.uint8), 8, 4), "take 4 bytes per row"),
])
def test_bad_inputs_raise_input_error(layer, call, message):
    W, _, H = layer
    W = W[:, :100]
    H = H[:100, :100]
    with pytest.raises(ValueError) as e:
        call(W, H)
    assert isinstance(e.value, mcompress.InputError)
    assert message in str(e.value) and "\n" not in str(e.value)
