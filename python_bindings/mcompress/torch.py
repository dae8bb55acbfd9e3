"""mcompress for torch.nn.Module: quantize or prune the nn.Linear layers of any model in place, block by
block on calibration batches, with the library's C++ pipeline (the same layer selection, engine and
passes as ``mcompress quantize`` / ``mcompress prune``; GIL released while they run), and save the
result as an mcompress packed checkpoint.

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
from ._torch_calib import Engine

__all__ = ["quantize_", "prune_", "to_state_dict", "save"]

# What the library's quantize_model / prune_model offer that changes only weights (smoothquant also
# quantizes activations, which a torch module would not do).
_QUANT_METHODS = ("gptq", "rtn", "hqq", "awq", "imatrix")
_PRUNE_METHODS = ("sparsegpt", "wanda", "magnitude")


def _progress(progress):
    """A callable for the engine's events, or None when nothing is shown."""
    if callable(progress):
        return progress
    if progress is True or (progress is None and sys.stdout.isatty()):
        return lambda e: print(f"[{e['index']}/{e['total']}] {e['phase']} {e['layer']}", flush=True)
    return None


def _codes_store(module):
    store = module.__dict__.get("mcompress_quantized")
    if store is None:
        store = {}
        module.__dict__["mcompress_quantized"] = store
    return store


def _batches(calib_batches, needs_calib, what):
    if needs_calib and calib_batches is None:
        raise InputError(f"[torch] {what} needs calibration batches")
    batches = [] if calib_batches is None else list(calib_batches)
    if needs_calib and not batches:
        raise InputError(f"[torch] {what}: calib_batches is empty")
    return batches


def _patterns(p):
    return [p] if isinstance(p, str) else list(p or [])


def _report(engine, result):
    """The engine's rows as report dicts (name, method, scheme, shape, block, rel_output_error where
    measured, note where there is one)."""
    rows = []
    for r in result["layers"]:
        row = {"name": r["name"], "method": r["method"], "scheme": r["scheme"], "shape": list(r["shape"]),
               "block": engine.block_name(r["name"])}
        if r["rel_output_error"] is not None:
            row["rel_output_error"] = r["rel_output_error"]
        if r["note"]:
            row["note"] = r["note"]
        rows.append(row)
    return rows


def quantize_(module, calib_batches, method="gptq", bits=4, group_size=128, act_order=False, sym=None,
              blocks=None, targets=None, ignore=None, progress=None, damp=0.01, fp64=False, scale_groups=None):
    """Quantizes the nn.Linear layers of `module` in place and returns a report (one dict per layer:
    name, method, scheme, shape, block, rel_output_error on the calibration inputs where measured, note).

    Runs the library's quantize_model (as ``mcompress quantize``): targets / ignore are its patterns
    (fnmatch globs where "*" crosses dots, or "re:REGEX" on the whole name) matched against qualified
    module names; without targets every Linear but the classifier (the last Linear in module order)
    is selected. Linear layers selected outside the blocks are quantized with RTN.
    method: "gptq" (error compensation through the inverse Hessian), "awq" (activation-aware scales
    folded into the LayerNorm/RMSNorm whose output a group of layers reads, or into a Linear named in
    ``scale_groups``, then a clip search and RTN), "imatrix", "rtn" and "hqq" (calib_batches may be None;
    given, they measure each layer's error; hqq fits each group's zero point, asymmetric only). sym: None =
    symmetric, except hqq (asymmetric). group_size None/0: per output channel. scale_groups: {Linear
    name: [names of the Linear layers of its block reading its outputs one to one]} for structures where
    a per-channel scale commutes with what lies between (attention's values -> output projection,
    SwiGLU's up -> down projection). progress: None (printed on a terminal), False, True, or a callable
    receiving {"event", "phase", "layer", "index", "total"}.

    >>> report = mcompress.torch.quantize_(model, batches, method="gptq", bits=4, group_size=64)
    """
    if method not in _QUANT_METHODS:
        raise InputError(f"[torch] method '{method}' is not available (allowed: {', '.join(_QUANT_METHODS)})")
    batches = _batches(calib_batches, method not in ("rtn", "hqq"), "quantize_")
    if sym is None:
        sym = method != "hqq"
    with Engine(module, batches, blocks) as engine:
        for prev, readers in (scale_groups or {}).items():
            engine.model.declare_scale_group(prev, list(readers))
        res = _mcompress.torch_quantize(engine.model, len(batches), method, int(bits),
                                        0 if group_size is None else int(group_size), bool(sym), bool(act_order),
                                        float(damp), bool(fp64), _patterns(targets), _patterns(ignore),
                                        _progress(progress))
        report = _report(engine, res)
    _codes_store(module).update(res["quantized"])
    return report


def prune_(module, calib_batches, method="sparsegpt", sparsity=0.5, pattern=None, bits=None, group_size=128,
           sym=True, blocks=None, targets=None, ignore=None, progress=None, damp=0.01, fp64=False):
    """Prunes the nn.Linear layers of `module` in place (weights set to exactly 0) and returns a report
    (one dict per layer: name, method, scheme, shape, block, sparsity, rel_output_error where measured).

    Runs the library's prune_model (as ``mcompress prune``; layer selection as :func:`quantize_`).
    method: "sparsegpt" (OBS update through the inverse Hessian), "wanda" (|W| · ‖X_j‖, per row),
    "magnitude" (|W| over the layer; no calibration). sparsity in [0, 1), or pattern "N:M" ("2:4": 2 of
    every 4 input columns zeroed in each row). bits: also quantize the survivors (sparsegpt: jointly;
    wanda/magnitude: RTN afterwards; a zero stays zero on every grid), codes kept for save(). Layers
    selected outside the blocks can only be pruned by magnitude.

    >>> mcompress.torch.prune_(model, batches, method="sparsegpt", pattern="2:4")
    """
    if method not in _PRUNE_METHODS:
        raise InputError(f"[torch] method '{method}' is not available (allowed: {', '.join(_PRUNE_METHODS)})")
    n, m = A._nm(0, 0, pattern)
    batches = _batches(calib_batches, method != "magnitude", "prune_")
    with Engine(module, batches, blocks) as engine:
        res = _mcompress.torch_prune(engine.model, len(batches) if method != "magnitude" else 0, method,
                                     float(sparsity), n, m, None if bits is None else int(bits),
                                     0 if group_size is None else int(group_size), bool(sym), float(damp),
                                     bool(fp64), _patterns(targets), _patterns(ignore), _progress(progress))
        report = _report(engine, res)
        for row in report:
            w = engine.params[row["name"] + ".weight" if row["name"] else "weight"]
            row["sparsity"] = float((w == 0).float().mean())
    _codes_store(module).update(res["quantized"])
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
