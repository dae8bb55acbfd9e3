"""How mcompress.torch shows a torch.nn.Module to the C++ engine (python_bindings/src/torch_engine.cpp),
which runs the library's quantize_model / prune_model on it: the CLI's layer selection, pattern
matching, layer-sequential engine, passes and AWQ scale folding. This file only describes the module
and captures tensors; it decides nothing about what is compressed or how.

Blocks: ``blocks`` given (modules or their qualified names), else the entries of the first non-empty
nn.ModuleList (transformer layers), else every top-level child holding an nn.Linear. The C++ engine
receives every nn.Linear and nn.Embedding (name, block index or -1, weight, bias) and every norm inside
a block (a module whose class name contains "Norm" with a 1-D weight), in module order.

How block k's statistics are collected: for each calibration batch the engine asks for
``forward(k, i)``, which runs the model's own forward on batch i with hooks on block k's layers and a
forward hook on block k that stops the forward as soon as the block is done. The Linear hooks hand
each input to the engine (layers reading the same tensor object share it), the norm hooks say which
tensor each norm produced (AWQ's scale groups). Before each forward the engine copies the parameters
it replaced into the module (``set_param``), so block k sees the inputs the compressed blocks 0..k-1
give it. Nothing is cached between blocks: memory stays that of one forward, at the price of (k+1)/K
of a forward per block and batch (about K/2 full forwards in all). It works for any forward signature
(kwargs, masks, residual streams outside the blocks) since the model itself runs.
"""
import numpy as np
import torch

from . import _mcompress
from ._errors import InputError


class _StopForward(Exception):
    """Raised by the hook on the block being calibrated once it has run."""


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


def call(module, batch):
    if isinstance(batch, dict):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


def _is_norm(m):
    w = getattr(m, "weight", None)
    return "Norm" in type(m).__name__ and isinstance(w, torch.Tensor) and w.dim() == 1


def _array(t):
    """float32 C-contiguous CPU numpy view (a copy only when the tensor is not one already)."""
    return t.detach().float().cpu().contiguous().numpy()


class Engine:
    """The C++ model of `module` (``self.model``, a _mcompress.TorchModuleModel) and the runner it calls
    back. Use as a context manager: leaving it breaks the model <-> runner reference cycle."""

    def __init__(self, module, batches, blocks=None):
        if not isinstance(module, torch.nn.Module):
            raise InputError(f"[torch] expected a torch.nn.Module, got {type(module).__name__}")
        self.module, self.batches = module, batches
        self.blocks = find_blocks(module, blocks)
        owner = {}
        for k, (_, b) in enumerate(self.blocks):
            for m in b.modules():
                owner.setdefault(id(m), k)
        layers = []
        self.params = {}                                    # state_dict key -> parameter
        self.block_of = {}                                  # layer name -> block index
        self.hooked = [[] for _ in self.blocks]             # per block: (name, module, kind)
        for name, m in module.named_modules():
            k = owner.get(id(m), -1)
            if isinstance(m, torch.nn.Linear):
                kind = "linear"
            elif isinstance(m, torch.nn.Embedding):
                kind, k = "embedding", -1  # selectable by targets, quantized outside the blocks (RTN)
            elif _is_norm(m) and k >= 0:
                kind = "norm"
            else:
                continue
            prefix = name + "." if name else ""
            bias = getattr(m, "bias", None)
            layers.append(dict(name=name, kind=kind, block=k, weight=_array(m.weight),
                               bias=None if bias is None else _array(bias)))
            self.params[prefix + "weight"] = m.weight
            if bias is not None:
                self.params[prefix + "bias"] = bias
            self.block_of[name] = k
            if k >= 0:
                self.hooked[k].append((name, m, kind))
        if not any(l["kind"] == "linear" for l in layers):
            raise InputError(f"[torch] {type(module).__name__} has no torch.nn.Linear layer to compress")
        self.model = _mcompress.TorchModuleModel(layers, len(self.blocks), self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.model = None

    def block_name(self, layer):
        k = self.block_of.get(layer, -1)
        return self.blocks[k][0] if k >= 0 else None

    # Called by the C++ engine.
    def set_param(self, key, array):
        p = self.params[key]
        with torch.no_grad():
            p.copy_(torch.from_numpy(array).reshape(p.shape).to(p.dtype))

    def _feed(self, name, x, arrays):
        a = arrays.get(id(x))
        if a is None:
            a = arrays[id(x)] = _array(x)
        self.model.feed(name, a, id(x))

    def forward(self, k, i):
        block = self.blocks[k][1]
        keep, arrays, hooks = [], {}, []  # keep: tensors seen, so no id() is reused during this forward

        def linear_hook(name):
            def hook(mod, inp, out):
                keep.append(inp[0])
                self._feed(name, inp[0], arrays)
            return hook

        def norm_hook(name):
            def hook(mod, inp, out):
                if isinstance(out, torch.Tensor):
                    keep.append(out)
                    self.model.observe(name, id(out))
            return hook

        def stop_hook(mod, inp, out):
            raise _StopForward()

        try:
            for name, m, kind in self.hooked[k]:
                hooks.append(m.register_forward_hook(linear_hook(name) if kind == "linear" else norm_hook(name)))
            if block is not self.module:
                hooks.append(block.register_forward_hook(stop_hook))
            with torch.no_grad():
                try:
                    call(self.module, self.batches[i])
                except _StopForward:
                    pass
        finally:
            for h in hooks:
                h.remove()
