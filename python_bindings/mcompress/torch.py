"""mcompress for torch.nn.Module: quantize or prune the nn.Linear layers of any model in place, block by
block on calibration batches, with the library's C++ algorithms (GIL released while they run), and
save the result as an mcompress packed checkpoint.

    import mcompress.torch as mct
    batches = [tokens[i:i + 8] for i in range(0, 128, 8)]       # what model(batch) takes
    report = mct.quantize_(model, batches, method="gptq", bits=4, group_size=128)
    mct.save(model, "model.safetensors")                        # `mcompress inspect` reads it
    weights, meta = mcompress.load("model.safetensors")         # == model's weights, exactly

Batches are passed as ``model(batch)``, ``model(*batch)`` for a tuple/list, ``model(**batch)`` for a dict.
Blocks and the calibration order: see mcompress._torch_calib (each block's statistics come from a
forward in which the blocks before it are already compressed). Weights are replaced by their
dequantized float values (use float32 models: a float16/bfloat16 parameter would round them again);
the codes are kept in ``model.mcompress_quantized`` ({state_dict key: codes, scales, zeros, grid}),
which :func:`save` and :func:`to_state_dict` write in the packed layout (docs/packed-format.md).
"""
import os
import sys
import tempfile

import numpy as np
import torch

from . import _arrays as A
from . import _mcompress
from ._errors import InputError
from ._torch_calib import collect, find_blocks, select_linears

__all__ = ["quantize_", "prune_", "to_state_dict", "save"]

_QUANT_METHODS = ("gptq", "rtn", "awq")
_PRUNE_METHODS = ("sparsegpt", "wanda", "magnitude")


def _progress(progress):
    if callable(progress):
        return progress
    if progress is True or (progress is None and sys.stdout.isatty()):
        return lambda e: print(f"[{e['index']}/{e['total']}] {e['phase']} {e['layer']}", flush=True)
    return lambda e: None


def _codes_store(module):
    store = module.__dict__.get("mcompress_quantized")
    if store is None:
        store = {}
        module.__dict__["mcompress_quantized"] = store
    return store


def _set_weight(lin, w):
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)).to(lin.weight.dtype))


def _rel_error(W, Wq, H):
    """tr(D H Dᵀ) / tr(W H Wᵀ), D = W - Wq: the layer's relative output error on the calibration inputs."""
    W, Wq, H = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (W, Wq, H))
    D = W - Wq
    den = float(((W @ H) * W).sum())
    return float(((D @ H) * D).sum()) / den if den > 0 else 0.0


def _record(store, name, q, bits, group_size, sym):
    g_idx = None if q.plain_groups else np.asarray(q.g_idx)
    store[name + ".weight"] = dict(codes=np.asarray(q.codes), scales=np.asarray(q.scales),
                                   zeros=np.asarray(q.zeros), bits=int(bits), group_size=int(group_size),
                                   sym=bool(sym), g_idx=g_idx)


def _weight(lin):
    return lin.weight.detach().float().cpu().numpy().copy()  # a copy: the parameter is overwritten later


def _check_common(module, calib_batches, needs_calib, what):
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"[torch] {what} needs a torch.nn.Module, got {type(module).__name__}")
    if needs_calib:
        if calib_batches is None:
            raise InputError(f"[torch] {what} needs calibration batches")
        calib_batches = list(calib_batches)
        if not calib_batches:
            raise InputError(f"[torch] {what}: calib_batches is empty")
    return calib_batches


def _awq_fold(module, groups, stats, linears, bits, group_size, sym):
    """AWQ scales for each group of Linear layers reading one norm's output: s folded into the norm
    (weight and bias / s) and the layers' columns (* s). Returns {linear name: s}."""
    lin = dict(linears)
    scale_of = {}
    for norm, names in groups:
        if norm is None:
            continue
        acc = stats[names[0]]
        a = A.awq_scales([_weight(lin[n]) for n in names], acc.mean_abs, acc.H, bits=bits, group_size=group_size,
                         sym=sym)
        s = torch.from_numpy(np.asarray(a.scales))
        with torch.no_grad():
            norm.weight.div_(s.to(norm.weight.dtype))
            if getattr(norm, "bias", None) is not None:
                norm.bias.div_(s.to(norm.bias.dtype))
            for n in names:
                lin[n].weight.mul_(s.to(lin[n].weight.dtype).unsqueeze(0))
                scale_of[n] = s.numpy()
    return scale_of


def _plan(module, calib_batches, needs_calib, what, group_size, blocks, targets, ignore, progress):
    """What quantize_ and prune_ both start with: checked batches, the blocks and their Linears, the
    progress sink, the module's code store and the number of layers."""
    batches = _check_common(module, calib_batches, needs_calib, what)
    blks = find_blocks(module, blocks)
    per_block, outside = select_linears(module, blks, targets, ignore)
    total = sum(len(ls) for ls in per_block) + len(outside)
    return (batches, 0 if group_size is None else int(group_size), blks, per_block, outside, _progress(progress),
            _codes_store(module), total)


def quantize_(module, calib_batches, method="gptq", bits=4, group_size=128, act_order=False, sym=True,
              blocks=None, targets=None, ignore=None, progress=None, damp=0.01, fp64=False):
    """Quantizes the nn.Linear layers of `module` in place and returns a report (one dict per layer:
    name, method, shape, rel_output_error on the calibration inputs where measured).

    method: "gptq" (error compensation through the inverse Hessian), "awq" (activation-aware scales
    folded into the LayerNorm/RMSNorm feeding a group of layers, then a clip search and RTN; layers not
    fed directly by a norm get the clip search only), "rtn" (no calibration: calib_batches may be None).
    group_size None/0: per output channel. blocks, targets, ignore: see mcompress._torch_calib
    (Linear layers selected outside the blocks are quantized with RTN). progress: None (printed on a
    terminal), False, True, or a callable receiving {"phase", "layer", "index", "total"}.

    >>> report = mcompress.torch.quantize_(model, batches, method="gptq", bits=4, group_size=64)
    """
    if method not in _QUANT_METHODS:
        raise InputError(f"[torch] method '{method}' is not available (allowed: {', '.join(_QUANT_METHODS)})")
    batches, group_size, blks, per_block, outside, emit, store, total = _plan(
        module, calib_batches, method != "rtn", "quantize_", group_size, blocks, targets, ignore, progress)
    report, done = [], 0
    for (bname, block), linears in zip(blks, per_block):
        if not linears:
            continue
        stats, groups = ({}, []) if method == "rtn" else collect(module, block, linears, batches, fp64=fp64,
                                                                find_producers=method == "awq")
        scale_of = _awq_fold(module, groups, stats, linears, bits, group_size, sym) if method == "awq" else {}
        for name, lin in linears:
            done += 1
            emit({"event": "progress", "phase": "quantize", "layer": name, "index": done, "total": total})
            W = _weight(lin)
            row = {"name": name, "method": method, "shape": list(W.shape), "block": bname}
            if method == "rtn":
                q = A.rtn(W, bits=bits, group_size=group_size, sym=sym)
            else:
                H = stats[name].H
                if name in scale_of:  # the layer now reads x / s
                    s = scale_of[name]
                    H = H / np.outer(s, s)
                    row["note"] = "awq scales folded into the norm"
                if method == "gptq":
                    q = A.gptq(W, H, bits=bits, group_size=group_size, act_order=act_order, sym=sym, damp=damp)
                else:
                    q = A.rtn(A.awq_clip(W, H, bits=bits, group_size=group_size, sym=sym), bits=bits,
                              group_size=group_size, sym=sym)
                row["rel_output_error"] = _rel_error(W, q.weight, H)
            _set_weight(lin, q.weight)
            _record(store, name, q, bits, group_size, sym)
            report.append(row)
    for name, lin in outside:
        done += 1
        emit({"event": "progress", "phase": "quantize", "layer": name, "index": done, "total": total})
        q = A.rtn(_weight(lin), bits=bits, group_size=group_size, sym=sym)
        _set_weight(lin, q.weight)
        _record(store, name, q, bits, group_size, sym)
        report.append({"name": name, "method": "rtn", "shape": list(lin.weight.shape), "block": None,
                       "note": "outside the blocks: plain RTN"})
    return report


def prune_(module, calib_batches, method="sparsegpt", sparsity=0.5, pattern=None, bits=None, group_size=128,
           sym=True, blocks=None, targets=None, ignore=None, progress=None, damp=0.01, fp64=False):
    """Prunes the nn.Linear layers of `module` in place (weights set to exactly 0) and returns a report
    (one dict per layer: name, method, shape, sparsity, rel_output_error where measured).

    method: "sparsegpt" (OBS update through the inverse Hessian), "wanda" (|W| · ‖X_j‖, per row),
    "magnitude" (|W| over the layer; no calibration). sparsity in [0, 1), or pattern "N:M" ("2:4": 2 of
    every 4 input columns zeroed in each row). bits: also quantize the survivors (sparsegpt: jointly;
    wanda/magnitude: RTN afterwards; a zero stays zero on every grid), codes kept for save(). Linear
    layers selected outside the blocks are pruned by magnitude.

    >>> mcompress.torch.prune_(model, batches, method="sparsegpt", pattern="2:4")
    """
    if method not in _PRUNE_METHODS:
        raise InputError(f"[torch] method '{method}' is not available (allowed: {', '.join(_PRUNE_METHODS)})")
    n, m = A._nm(0, 0, pattern)
    if not (0 <= float(sparsity) < 1):
        raise InputError(f"[torch] sparsity {sparsity} outside [0, 1)")
    batches, group_size, blks, per_block, outside, emit, store, total = _plan(
        module, calib_batches, method != "magnitude", "prune_", group_size, blocks, targets, ignore, progress)
    report, done = [], 0

    def finish(name, lin, W, p, meth, H, bname):
        q = None
        if bits is not None and p.codes is not None:
            q = A.QuantizedWeight(p.weight, p.codes, p.scales, p.zeros, bits=bits, group_size=group_size, sym=sym)
        elif bits is not None:
            q = A.rtn(p.weight, bits=bits, group_size=group_size, sym=sym)
        Wp = q.weight if q is not None else p.weight
        _set_weight(lin, Wp)
        if q is not None:
            _record(store, name, q, bits, group_size, sym)
        row = {"name": name, "method": meth, "shape": list(W.shape), "block": bname,
               "sparsity": float((np.asarray(Wp) == 0).mean())}
        if H is not None:
            row["rel_output_error"] = _rel_error(W, Wp, H)
        report.append(row)

    for (bname, block), linears in zip(blks, per_block):
        if not linears:
            continue
        stats = {} if method == "magnitude" else collect(module, block, linears, batches, fp64=fp64)[0]
        for name, lin in linears:
            done += 1
            emit({"event": "progress", "phase": "prune", "layer": name, "index": done, "total": total})
            W = _weight(lin)
            H = stats[name].H if name in stats else None
            if method == "sparsegpt":
                p = A.sparsegpt(W, H, sparsity=sparsity, prune_n=n, prune_m=m, bits=bits, group_size=group_size,
                                sym=sym, damp=damp)
            elif method == "wanda":
                p = A.wanda(W, sum_sq=stats[name].sum_sq, sparsity=sparsity, prune_n=n, prune_m=m)
            else:
                p = A.magnitude(W, sparsity=sparsity, prune_n=n, prune_m=m)
            finish(name, lin, W, p, method, H, bname)
    for name, lin in outside:
        done += 1
        emit({"event": "progress", "phase": "prune", "layer": name, "index": done, "total": total})
        W = _weight(lin)
        finish(name, lin, W, A.magnitude(W, sparsity=sparsity, prune_n=n, prune_m=m), "magnitude", None, None)
    return report


def _dense_and_quantized(module):
    store = module.__dict__.get("mcompress_quantized", {})
    dense = {}
    for key, t in module.state_dict(keep_vars=False).items():
        if key in store:
            continue
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        dense[key] = t.contiguous().numpy()
    missing = [k for k in store if k not in module.state_dict()]
    if missing:
        raise InputError(f"[torch] quantized weights {missing[:3]} are no longer in the module's state_dict")
    return dense, store


def save(module, path, metadata=None):
    """Writes `module` as an mcompress packed safetensors file (atomically): quantized Linear weights as
    packed codes + float16 scales (+ zero points / g_idx), everything else in its state_dict as it is.
    ``mcompress inspect PATH`` describes it; ``mcompress.load(PATH)`` gives back the module's weights exactly."""
    dense, store = _dense_and_quantized(module)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    _mcompress.write_packed(os.fspath(path), dense, store, meta)


class PackedStateDict(dict):
    """The packed layout as a dict of torch tensors (``key.qweight``, ``key.scales``, ``key.zeros``,
    ``key.g_idx`` for quantized weights, the other state_dict entries as they are); ``metadata`` holds
    the file metadata (the quantization description under "mcompress.quantization")."""
    metadata = None


def to_state_dict(module, metadata=None):
    """The packed layout :func:`save` writes, as a :class:`PackedStateDict` of torch tensors (written
    through a temporary file by the same C++ writer, so it is exactly the file's content)."""
    from . import load
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "packed.safetensors")
        save(module, path, metadata)
        tensors, meta = load(path, dequantize=False)
        out = PackedStateDict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    out.metadata = meta
    return out
