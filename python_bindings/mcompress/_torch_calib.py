"""Layer-sequential calibration of a torch.nn.Module for mcompress.torch (quantize_, prune_).

Blocks: ``blocks`` given (modules or their qualified names), else the entries of the first non-empty
nn.ModuleList (transformer layers), else every top-level child holding an nn.Linear. Linear layers
inside the blocks are compressed with calibration statistics; those outside only when ``targets``
selects them, without statistics (RTN / magnitude).

How block k's statistics are collected: the whole calibration forward is run again for every block,
with hooks on block k's Linear layers accumulating their inputs (C++ Hessian: H = 2/n Σ x xᵀ, mean|x|,
Σ x²), and a forward hook on block k that stops the forward as soon as the block is done. Blocks 0..k-1
are already compressed at that point, so block k sees the inputs the compressed model gives it (as
the C++ engine's layer-sequential order does). Nothing is cached between blocks: memory stays that of
one forward, at the price of (k+1)/K of a forward per block (about K/2 full forwards in all), which is
cheap next to GPTQ on any model that fits a CPU. It works for any forward signature (kwargs, masks,
residual streams outside the blocks) since the model itself runs.
"""
import fnmatch
import re

import torch

from ._arrays import Hessian
from ._errors import InputError


class _StopForward(Exception):
    """Raised by the hook on the block being calibrated once it has run."""


def matches(patterns, name):
    """fnmatch globs or "re:REGEX" (the whole name), as the CLI's --targets/--ignore."""
    for p in patterns or []:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def find_blocks(module, blocks=None):
    """[(qualified name, block module)] in execution order (see the module docstring)."""
    names = {id(m): n for n, m in module.named_modules()}
    if blocks is not None:
        mods = dict(module.named_modules())
        out = []
        for b in blocks:
            if isinstance(b, str):
                if b not in mods:
                    raise InputError(f"[torch] block '{b}' is not a submodule of the model")
                out.append((b, mods[b]))
            elif id(b) in names:
                out.append((names[id(b)], b))
            else:
                raise InputError(f"[torch] block {type(b).__name__} is not a submodule of the model")
        return out
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0:
            return [(f"{name}.{i}" if name else str(i), b) for i, b in enumerate(m)]
    out = []
    for name, m in module.named_children():
        if isinstance(m, torch.nn.Linear) or any(isinstance(s, torch.nn.Linear) for s in m.modules()):
            out.append((name, m))
    if not out and isinstance(module, torch.nn.Linear):
        out.append(("", module))
    return out


def select_linears(module, blocks, targets=None, ignore=None):
    """(per block: [(name, linear)], outside: [(name, linear)]): the Linear layers to compress. Default:
    every Linear inside the blocks; with targets, the Linear layers whose qualified name matches (inside
    or outside the blocks). ignore removes names. A pattern matching no Linear is an InputError."""
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise InputError(f"[torch] {type(module).__name__} has no torch.nn.Linear layer to compress")
    for kind, pats in (("targets", targets), ("ignore", ignore)):
        for p in pats or []:
            if not any(matches([p], n) for n, _ in linears):
                shown = ", ".join(n for n, _ in linears[:4])
                raise InputError(f"[torch] {kind} pattern '{p}' matches no Linear layer (they are named like {shown})")
    owner = {}
    for k, (_, b) in enumerate(blocks):
        for m in b.modules():
            owner.setdefault(id(m), k)
    per_block = [[] for _ in blocks]
    outside = []
    for n, m in linears:
        if (targets and not matches(targets, n)) or matches(ignore, n):
            continue
        k = owner.get(id(m))
        if k is not None:
            per_block[k].append((n, m))
        elif targets:
            outside.append((n, m))
    if not any(per_block) and not outside:
        raise InputError("[torch] no Linear layer selected (check targets / ignore)")
    return per_block, outside


def call(module, batch):
    if isinstance(batch, dict):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


def _is_norm(m, width):
    w = getattr(m, "weight", None)
    return ("Norm" in type(m).__name__ and isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == width)


def collect(module, block, linears, batches, fp64=False, find_producers=False):
    """Runs the calibration forward until `block` is done, accumulating each of `linears`' inputs.
    Returns {name: Hessian} and, with find_producers, the input groups of the first batch:
    [(norm module or None, [names of the linears reading that same tensor])]."""
    stats = {n: Hessian(m.in_features, fp64=fp64) for n, m in linears}
    first = {"on": True}
    seen_inputs = []   # batch 0: (input tensor, [linear names]) — references kept so ids stay unique
    norm_outputs = []  # batch 0: (norm module, output tensor)
    hooks = []

    def linear_hook(name, in_features):
        def hook(mod, inp, out):
            x = inp[0]
            stats[name].add(x.detach().reshape(-1, in_features).float())
            if find_producers and first["on"]:
                for t, names in seen_inputs:
                    if t is x:
                        names.append(name)
                        return
                seen_inputs.append((x, [name]))
        return hook

    def norm_hook(mod, inp, out):
        if first["on"] and isinstance(out, torch.Tensor):
            norm_outputs.append((mod, out))

    def stop_hook(mod, inp, out):
        raise _StopForward()

    try:
        for n, m in linears:
            hooks.append(m.register_forward_hook(linear_hook(n, m.in_features)))
        if find_producers:
            widths = {m.in_features for _, m in linears}
            for m in module.modules():
                if any(_is_norm(m, w) for w in widths):
                    hooks.append(m.register_forward_hook(norm_hook))
        if block is not module:
            hooks.append(block.register_forward_hook(stop_hook))
        with torch.no_grad():
            for batch in batches:
                try:
                    call(module, batch)
                except _StopForward:
                    pass
                first["on"] = False
    finally:
        for h in hooks:
            h.remove()
    groups = []
    if find_producers:
        for x, names in seen_inputs:
            prod = next((m for m, t in norm_outputs if t is x), None)
            groups.append((prod, names))
    for n, s in stats.items():
        if s.samples == 0:
            raise InputError(f"[torch] layer {n} was not reached by the calibration forward")
    return stats, groups
