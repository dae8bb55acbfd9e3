"""Array-level compression algorithms: the library's own C++ code on numpy arrays or CPU torch tensors.

Inputs may be numpy arrays or CPU torch tensors. A C-contiguous float32 input is read by C++ in place
(no copy: torch tensors go through ``.numpy()``, which shares memory); anything else (float64, a
transposed view, ...) is converted once to float32. Results are numpy arrays, or torch tensors when
the weight was a torch tensor (``torch.from_numpy``: no copy). The GIL is released while C++ works, so
several layers can be processed from Python threads. Bad shapes or options raise
:class:`mcompress.InputError` (a ValueError) with a one-line message.

Example::

    import numpy as np, mcompress
    X = np.random.randn(2048, 512).astype(np.float32)      # a layer's calibration inputs
    W = np.random.randn(256, 512).astype(np.float32)
    H = mcompress.hessian(X)                                # 2/n Σ x xᵀ
    q = mcompress.gptq(W, H, bits=4, group_size=128)
    q.weight          # float32 [256, 512], the dequantized weight
    q.codes           # uint8 [256, 512] in 0..15;  q.scales / q.zeros float32 [256, 4]
    packed = mcompress.pack_int4(q.codes)                   # uint8 [256, 256]
"""
from typing import Any, NamedTuple, Optional

import numpy as np

from . import _mcompress

__all__ = ["QuantizedWeight", "PrunedWeight", "AwqScales", "Hessian", "gptq", "rtn", "awq_scales", "awq_clip",
           "sparsegpt", "wanda", "magnitude", "nm_mask", "row_mask", "hessian", "pack_codes", "unpack_codes",
           "pack_int4", "unpack_int4"]


class QuantizedWeight(NamedTuple):
    """A quantized weight: ``weight`` float32 [out, in] = (codes - zeros[g]) * scales[g] with g the
    column's group (``g_idx[c]``; ``c // group_size`` when ``plain_groups``), ``codes`` uint8
    [out, in], ``scales``/``zeros`` float32 [out, n_groups] (scales exactly representable in float16),
    ``perm`` the quantization order (GPTQ act_order; None for RTN), ``loss`` GPTQ's layer error."""
    weight: Any
    codes: Any
    scales: Any
    zeros: Any
    perm: Any = None
    g_idx: Any = None
    plain_groups: bool = True
    bits: int = 4
    group_size: int = 0
    sym: bool = True
    loss: Optional[float] = None


class PrunedWeight(NamedTuple):
    """A pruned weight: ``weight`` float32 [out, in] (exactly 0 where pruned; dequantized when
    ``bits`` was given), ``mask`` bool [out, in] (True = kept), and with quantization ``codes``,
    ``scales``, ``zeros`` (contiguous column groups), else None."""
    weight: Any
    mask: Any
    codes: Any = None
    scales: Any = None
    zeros: Any = None
    loss: Optional[float] = None


class AwqScales(NamedTuple):
    """AWQ's per-channel scales ``scales`` float32 [C], the chosen ``alpha`` and the output error of
    every alpha tried (``errors``, alpha = i / len(errors))."""
    scales: Any
    alpha: float
    errors: list


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _np(x):
    """numpy view of a CPU torch tensor (shares memory), other inputs as they are (C++ converts)."""
    if x is None or not _is_torch(x):
        return x
    t = x.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype not in (_torch().float32, _torch().float64, _torch().float16, _torch().uint8, _torch().int32,
                       _torch().int64, _torch().bool):
        t = t.float()  # bfloat16 and friends: numpy has no such dtype
    return t.numpy()


def _torch():
    import torch
    return torch


def _out(like, a):
    """`a` (numpy) as `like`'s kind: a torch tensor sharing memory when `like` is one."""
    if a is None or not _is_torch(like):
        return a
    return _torch().from_numpy(a) if isinstance(a, np.ndarray) else a


def _group(group_size):
    return 0 if group_size is None else int(group_size)


def hessian(X, fp64=False):
    """H = 2/n Σ x xᵀ over the rows of X [..., in] (leading dims flattened), as GPTQ/SparseGPT use it.

    >>> H = mcompress.hessian(np.ones((4, 3), np.float32))   # 2 * ones((3, 3))
    """
    x = _np(X)
    shape = np.shape(x)
    if len(shape) < 1:
        raise _mcompress_error("[hessian] X must be an array [..., in]")
    h = Hessian(shape[-1], fp64=fp64)
    h.add(X)
    return _out(X, h.H)


def _mcompress_error(msg):
    from ._errors import InputError
    return InputError(msg)


class Hessian:
    """Running calibration statistics of one layer's inputs (C++ HessianAccumulator): ``add(X)`` batches
    [..., in]; ``H`` = 2/n Σ x xᵀ (float32, or float64 with fp64=True), ``mean_abs``, ``max_abs`` (float32
    [in]), ``sum_sq`` (float64 [in]), ``samples`` (rows seen).

    >>> acc = mcompress.Hessian(512)
    >>> for X in batches: acc.add(X)
    >>> q = mcompress.gptq(W, acc.H)
    """

    def __init__(self, in_features, fp64=False):
        self._acc = _mcompress.HessianAccumulator(int(in_features), bool(fp64))

    def add(self, X):
        self._acc.add(_np(X))
        return self

    def __getattr__(self, name):
        if name in ("H", "mean_abs", "max_abs", "sum_sq", "samples", "in_features"):
            return getattr(self._acc, name)
        raise AttributeError(name)


def gptq(W, H, bits=4, group_size=128, act_order=True, sym=True, damp=0.01, static_groups=False, block_size=128,
         mse_clip=False):
    """GPTQ (Frantar et al., 2022) of W [out, in] given its inputs' Hessian H [in, in] (see
    :func:`hessian`). group_size None or 0 = one grid per output channel. Returns a
    :class:`QuantizedWeight`; with act_order and dynamic groups, ``g_idx`` maps columns to groups.

    >>> q = mcompress.gptq(W, mcompress.hessian(X), bits=4, group_size=128)
    >>> err = np.linalg.norm(X @ (W - q.weight).T)
    """
    r = _mcompress.gptq(_np(W), _np(H), int(bits), _group(group_size), bool(act_order), bool(sym), float(damp),
                        bool(static_groups), int(block_size), bool(mse_clip))
    return QuantizedWeight(_out(W, r["weight"]), _out(W, r["codes"]), _out(W, r["scales"]), _out(W, r["zeros"]),
                           _out(W, r["perm"]), _out(W, r["g_idx"]), r["plain_groups"], int(bits), _group(group_size),
                           bool(sym), r["loss"])


def rtn(W, bits=4, group_size=32, sym=True, mse_clip=False):
    """Round-to-nearest quantization of W [out, in]: groups of ``group_size`` input columns (None/0: per
    output channel, -1: per tensor), symmetric (zero = 2^(bits-1)) or asymmetric grids, float16-exact
    scales. Returns a :class:`QuantizedWeight`.

    >>> q = mcompress.rtn(W, bits=8, group_size=None)     # int8 per channel
    """
    r = _mcompress.rtn(_np(W), int(bits), _group(group_size), bool(sym), bool(mse_clip))
    return QuantizedWeight(_out(W, r["weight"]), _out(W, r["codes"]), _out(W, r["scales"]), _out(W, r["zeros"]),
                           None, None, True, int(bits), _group(group_size), bool(sym), None)


def awq_scales(weights, x_mean_abs, H, bits=4, group_size=128, sym=True, grid=20, max_rows=512):
    """AWQ's scale search (Lin et al., 2023) for the layers reading one input (e.g. q, k, v after a
    norm): ``weights`` a list of [out_i, in] arrays (or one array), ``x_mean_abs`` [in] the mean |x| per
    input channel, ``H`` [in, in] their input Hessian. s = mean|x|^alpha, alpha in {0, 1/grid, ...},
    minimising Σ tr(D H Dᵀ), D = W - Q(W diag s) diag(1/s). Fold s into the producer of the input
    (divide the norm weight / preceding linear's rows by s) and multiply the layers' columns by s,
    then quantize (:func:`awq_clip` then :func:`rtn`). Returns :class:`AwqScales`.

    >>> acc = mcompress.Hessian(512).add(X)
    >>> a = mcompress.awq_scales([Wq, Wk, Wv], acc.mean_abs, acc.H, bits=4, group_size=128)
    >>> norm.weight /= a.scales;  Wq *= a.scales   # and Wk, Wv
    """
    ws = [weights] if not isinstance(weights, (list, tuple)) else list(weights)
    r = _mcompress.awq_scales([_np(w) for w in ws], _np(x_mean_abs), _np(H), int(bits), _group(group_size),
                              bool(sym), int(grid), int(max_rows))
    return AwqScales(_out(ws[0], r["scales"]), r["alpha"], list(r["errors"]))


def awq_clip(W, H, bits=4, group_size=128, sym=True):
    """AWQ's clip search: W [out, in] clamped per (row, group) to the range ratio (1.00, 0.95, ..., 0.55)
    with the least output error under H; quantize the result with :func:`rtn` (same spec)."""
    return _out(W, _mcompress.awq_clip(_np(W), _np(H), int(bits), _group(group_size), bool(sym)))


def _nm(prune_n, prune_m, pattern=None):
    if pattern:
        try:
            n, m = (int(v) for v in str(pattern).split(":"))
        except ValueError:
            raise _mcompress_error(f"[prune] pattern {pattern!r} is not N:M (e.g. '2:4')") from None
        return n, m
    return int(prune_n or 0), int(prune_m or 0)


def sparsegpt(W, H, sparsity=0.5, prune_n=0, prune_m=0, bits=None, group_size=128, sym=True, damp=0.01,
              block_size=128, mask=None):
    """SparseGPT (Frantar & Alistarh, 2023): prunes W [out, in] with the inverse-Hessian update;
    ``sparsity`` per block of ``block_size`` columns, or N:M (``prune_n`` of every ``prune_m`` input columns
    zeroed, e.g. 2, 4). ``bits``: also quantize the survivors in the same loop (grid ``group_size``/``sym``).
    ``mask`` (bool [out, in], True = kept): keep that pattern instead of choosing one. Returns
    :class:`PrunedWeight`.

    >>> p = mcompress.sparsegpt(W, H, prune_n=2, prune_m=4)      # 2:4
    >>> (p.weight.reshape(out, -1, 4) == 0).sum(-1).min()         # 2
    """
    r = _mcompress.sparsegpt(_np(W), _np(H), float(sparsity), int(prune_n), int(prune_m),
                             None if bits is None else int(bits), _group(group_size), bool(sym), float(damp),
                             int(block_size), _np(mask))
    return PrunedWeight(_out(W, r["weight"]), _out(W, r["mask"]), _out(W, r["codes"]), _out(W, r["scales"]),
                        _out(W, r["zeros"]), r["loss"])


def wanda(W, x=None, sparsity=0.5, prune_n=0, prune_m=0, sum_sq=None):
    """Wanda (Sun et al., 2023): score |W_ij| · ‖X_j‖₂, the smallest ``sparsity`` fraction of each row
    zeroed (or N:M per row with prune_n/prune_m); no weight update. ``x``: the input column norms ‖X_j‖₂
    [in], or the inputs X [n, in] themselves; or instead ``sum_sq``: Σ_n x_j² [in] (:class:`Hessian`'s
    ``sum_sq``). Returns :class:`PrunedWeight` (weight, mask).

    >>> p = mcompress.wanda(W, X, sparsity=0.5)
    >>> p = mcompress.wanda(W, sum_sq=acc.sum_sq, prune_n=2, prune_m=4)
    """
    if (x is None) == (sum_sq is None):
        raise _mcompress_error("[wanda] give one of x (norms ‖X_j‖ or the inputs X) and sum_sq (Σ x_j²)")
    if sum_sq is not None:
        x = np.sqrt(np.asarray(_np(sum_sq), np.float64)).astype(np.float32)
    w, m = _mcompress.score_prune(_np(W), _np(x), float(sparsity), int(prune_n), int(prune_m), True)
    return PrunedWeight(_out(W, w), _out(W, m))


def magnitude(W, sparsity=0.5, prune_n=0, prune_m=0):
    """Magnitude pruning: the smallest ``sparsity`` fraction of |W| over the whole layer zeroed (or N:M per
    row). Returns :class:`PrunedWeight` (weight, mask)."""
    w, m = _mcompress.score_prune(_np(W), None, float(sparsity), int(prune_n), int(prune_m), False)
    return PrunedWeight(_out(W, w), _out(W, m))


def nm_mask(score, n, m):
    """Keep-mask (bool, True = kept) of score [out, in]: in every group of m consecutive columns of a row,
    the n smallest scores are dropped (ties: lower column first).

    >>> mcompress.nm_mask(np.array([[4., 1., 3., 2.]]), 2, 4)    # [[True, False, True, False]]
    """
    return _out(score, _mcompress.mask(_np(score), 0.0, int(n), int(m), "row"))


def row_mask(score, sparsity):
    """Keep-mask of score [out, in]: floor(sparsity * in) smallest scores of each row dropped."""
    return _out(score, _mcompress.mask(_np(score), float(sparsity), 0, 0, "row"))


def pack_codes(codes, bits):
    """Packs uint8 codes [rows, cols] (or [cols]) of ``bits`` bits (2..8) into bytes as mcompress's packed
    checkpoints store them: code k of a row occupies bits [k*bits, (k+1)*bits) of the row's bytes read
    as one little-endian number, each row padded to whole bytes (int4: code 0 in the low nibble).

    >>> mcompress.pack_codes(np.array([[1, 2, 3]], np.uint8), 4)    # [[0x21, 0x03]]
    """
    return _out(codes, _mcompress.pack_codes(np.asarray(_np(codes)), int(bits)))


def unpack_codes(packed, cols, bits):
    """Inverse of :func:`pack_codes`: uint8 [rows, cols] from packed rows of ceil(cols*bits/8) bytes."""
    return _out(packed, _mcompress.unpack_codes(np.asarray(_np(packed)), int(cols), int(bits)))


def pack_int4(codes):
    """Two 4-bit codes per byte, low nibble first (:func:`pack_codes` with bits=4)."""
    return pack_codes(codes, 4)


def unpack_int4(packed, cols=None):
    """Inverse of :func:`pack_int4` (cols defaults to 2 x the packed width)."""
    p = np.shape(packed)
    return unpack_codes(packed, 2 * p[-1] if cols is None else cols, 4)
