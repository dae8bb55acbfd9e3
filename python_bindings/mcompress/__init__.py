"""mcompress: post-training quantization, pruning and distillation of model checkpoints, from Python.

The jobs are the CLI's own, run in this process by the same C++ code (the GIL is released while they
work); options are the CLI's options as keyword arguments (``group_size=32`` is ``--group-size 32``,
``act_order=True`` is ``--act-order``, a list is comma-joined)::

    import mcompress
    rep = mcompress.quantize("stories260K.bin", "out", method="gptq", bits=4, group_size=32,
                             calib="input.txt", eval="validation_100.txt")  # calibration: not the eval text
    rep.metrics[0]["compressed"], rep.layers[0]["rel_output_error"]
    weights, meta = mcompress.load("out/model.safetensors")      # dict of numpy arrays

Array-level algorithms for your own models (``mcompress.gptq(W, H, bits=4)``, ``rtn``,
``sparsegpt``, ``wanda``, ...) and ``mcompress.torch.quantize_(module, batches)`` for torch.nn.Module
are described in their docstrings. Errors derive from :class:`mcompress.Error`: :class:`InputError`
(a ValueError) for bad options and data, :class:`FileError` (an OSError) for files that cannot be
read or written, :class:`GateError` when a recipe's accuracy gate is missed.
"""
import json
import os
import sys

from . import _mcompress
from ._errors import Error, FileError, GateError, InputError
from ._arrays import *  # noqa: F401,F403  (gptq, rtn, sparsegpt, wanda, nm_mask, pack_int4, ...)
from ._arrays import __all__ as _array_names

__version__ = _mcompress.__version__

__all__ = ["Error", "InputError", "FileError", "GateError", "Report", "load", "save", "inspect",
           "quantize", "prune", "distill", "run", "sweep", "evaluate", "train", "convert", "export",
           "imatrix"] + list(_array_names)


class Report(dict):
    """A job's report (report.json) as a dict, with shortcuts: ``metrics`` and ``layers`` are lists of
    records (dicts), ``output`` the written model, ``directory`` where report.{json,md,html} are."""

    def __init__(self, data, directory):
        super().__init__(data)
        self.directory = str(directory)

    @property
    def metrics(self):
        return self.get("metrics", [])

    @property
    def layers(self):
        return self.get("layers", [])

    @property
    def output(self):
        return self.get("output")

    @property
    def settings(self):
        return self.get("settings", {})

    def metric(self, name=None):
        """The record of metric `name` (default: the primary one), or None."""
        for m in self.metrics:
            if (name is None and m.get("primary")) or m.get("name") == name:
                return m
        return None

    def __repr__(self):
        m = self.metric()
        what = f", {m['name']} {m.get('baseline')} -> {m.get('compressed')}" if m else ""
        return f"<mcompress.Report {self.get('title', '')!r}{what}, {len(self.layers)} layers>"


def _to_args(options):
    """Keyword arguments as CLI options: True -> flag, False/None -> omitted, list -> comma-joined
    (``override`` and other repeatable options: one flag per item)."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            if key in ("override",):
                for v in value:
                    args += [flag, str(v)]
            else:
                args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return args


def _progress_sink(progress):
    if progress is None or progress is False or progress is True:
        return None
    if not callable(progress):
        raise InputError("progress must be a callable taking one event dict, True, False or None")
    return lambda line: progress(json.loads(line))


def _quiet(progress):
    if progress is None:  # printed by default on a terminal, silent otherwise
        return not sys.stdout.isatty()
    return progress is False


def _command(name, positional, options, progress, report_dir=None):
    args = [name] + [os.fspath(p) for p in positional] + _to_args(options)
    sys.stdout.flush()
    rc = _mcompress.run_command(args, _progress_sink(progress), _quiet(progress))
    if rc == 130:
        raise KeyboardInterrupt(f"mcompress {name} was interrupted; its state is saved (run again with resume=True)")
    rep = None
    if report_dir is not None:
        path = os.path.join(os.fspath(report_dir), "report.json")
        if os.path.exists(path):
            with open(path) as f:
                rep = Report(json.load(f), report_dir)
    if rc == 3:
        raise GateError("accuracy gate missed: " + (rep or {}).get("settings", {}).get("accuracy gate", ""), rep)
    if rc != 0:
        raise Error(f"mcompress {name} exited with status {rc}")
    return rep


def quantize(model, output, *, progress=None, **options):
    """Quantizes `model` (any checkpoint format) into `output`/model.safetensors (packed) and returns
    the report. Options as ``mcompress quantize --help``: method ("rtn", "hqq", "imatrix", "gptq", "awq",
    "autoround", "smoothquant"; autoround_iters=200, autoround_batch=8), bits, group_size, per_channel, sym/asym, calib, calib_samples, calib_seqlen, seed,
    eval, targets, ignore, override=[...], target_bpw, act_order, true_sequential, keep_sparsity,
    eora=RANK (an EoRA LoRA adapter in `output`/eora, evaluated with and without), rotate ("hadamard" or
    "hadamard-online": QuaRot-style rotations first), act_bits=8|4 (per-token quantized inputs, any method),
    act_format="fp8"|"mxfp8"|"mxfp4"|"nvfp4" (FP activations, simulated), kv_bits=8 (kv_format="int8"|"fp8",
    kv_hadamard=True), autoround_kquant=True (AutoRound on the GGUF Q4_K/Q5_K lattice, then
    export(..., format="gguf:q4_k")), imatrix=FILE (method "imatrix" from a llama.cpp imatrix file),
    calib_range="0:5000" / eval_range="5000:10000" (one data file split), threads, ... progress: None (printed on a terminal), False (silent) or a callable receiving event
    dicts ({"event": "progress", "layer": ..., "index": i, "total": n, ...})."""
    return _command("quantize", [model], {"output": output, **options}, progress, output)


def prune(model, output, *, progress=None, **options):
    """Prunes `model` into `output` (method "sparsegpt" | "wanda" | "magnitude", sparsity=0.5 or
    pattern="2:4", bits=4 to also quantize, structured="ffn=0.25,heads=0.25", calib, eval, ...)."""
    return _command("prune", [model], {"output": output, **options}, progress, output)


def distill(output, *, progress=None, **options):
    """Teacher-student distillation into `output`: teacher=..., one of student_config / student_init /
    student, data=... or generate=N, steps, lr, loss="kl=1,T=2", eval, resume=True, ..."""
    return _command("distill", [], {"output": output, **options}, progress, output)


def run(recipe, model, output, *, progress=None, dry_run=False, **options):
    """Runs a recipe (YAML file) on `model` into `output` (calib, eval, seed, ...). A missed accuracy
    gate raises GateError (its `report` attribute holds the report)."""
    if dry_run:
        return _command("run", [recipe], {"model": model, "dry_run": True, **options}, progress)
    return _command("run", [recipe], {"model": model, "output": output, **options}, progress, output)


def sweep(spec, output, *, progress=None, **options):
    """Runs a sweep (models x recipes x parameters, a YAML file) into `output` (jobs=N,
    backend="local" | "slurm", partition, time, mem). Returns the combined sweep.json as a dict."""
    _command("sweep", [spec], {"output": output, **options}, progress)
    with open(os.path.join(os.fspath(output), "sweep.json")) as f:
        return json.load(f)


def train(output, *, progress=None, **options):
    """Trains a small LLaMA model from scratch (data, tokenizer, dim, layers, steps, ...)."""
    return _command("train", [], {"output": output, **options}, progress, output)


def evaluate(model, data, **options):
    """Evaluates `model` on `data` and returns the result as a dict: perplexity, mean NLL and bits per
    byte of a language model, top-1/top-5 of a classifier (options: tokenizer, arch, window, truncate,
    max_docs, reference=BASE for KL and top-1 agreement)."""
    events = []
    args = ["eval", os.fspath(model)] + _to_args({"data": data, **options})
    _mcompress.run_command(args, lambda line: events.append(json.loads(line)), False)
    for e in events:
        if e.get("event") == "result":
            e.pop("event")
            return e
    raise Error("mcompress eval produced no result")


def export(model, output, *, progress=None, **options):
    """Exports `model` (a packed mcompress output or any checkpoint) to another runtime's format (``mcompress
    export --help``): format="gguf:q4_k" | "gguf:auto" | "gguf:q2_k" ... | "compressed-tensors" | "hf-gptq" | ...,
    tokenizer, imatrix=FILE (weights the GGUF K / IQ fits), eval=DATA (evaluates the written file). Returns None."""
    _command("export", [model], {"output": output, **options}, progress)


def imatrix(model, output, *, progress=None, **options):
    """Computes llama.cpp's importance matrix of `model` on calibration data (calib=TEXT, calib_samples,
    calib_seqlen, tokenizer) into `output`, a GGUF imatrix file as llama-imatrix writes it (readable by
    llama-quantize, and by quantize(method="imatrix", imatrix=FILE) / export(imatrix=FILE)). Returns None."""
    _command("imatrix", [model], {"output": output, **options}, progress)


def convert(src, dst, **options):
    """Converts a checkpoint between formats (dtype="f16", format=..., metadata=["k=v", ...])."""
    _command("convert", [src, dst], options, False)


def inspect(path):
    """The format, metadata and tensor table (name, dtype, shape, nbytes) of a checkpoint, without
    reading tensor data."""
    return _mcompress.inspect(os.fspath(path))


def load(path, dequantize=True):
    """Reads a checkpoint (safetensors, PyTorch zip, HDF5, GGUF, llama2.c) as ``(tensors, metadata)``:
    a dict of numpy arrays (views of the memory-mapped file where the dtype allows; bfloat16 and GGUF
    blocks come as float32) and a dict of strings. A packed quantized checkpoint is dequantized to float32
    weights by their original names unless ``dequantize=False`` (then its codes and scales as stored)."""
    tensors, meta = _mcompress.load(os.fspath(path), dequantize)
    return tensors, meta


def _as_numpy(value):
    import numpy as np
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor: shares memory when it can
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        value = t.contiguous().numpy()
    a = np.asarray(value)
    if not a.flags["C_CONTIGUOUS"]:
        a = np.ascontiguousarray(a)
    return a


def save(path, tensors, metadata=None, format=""):
    """Writes a dict of numpy arrays or torch tensors as a checkpoint (format from the extension:
    .safetensors, .pt/.pth PyTorch zip, .h5 HDF5; or format=...), atomically. C-contiguous arrays are
    written without a copy."""
    arrays = [(str(k), _as_numpy(v)) for k, v in tensors.items()]
    _mcompress.save(os.fspath(path), arrays, {str(k): str(v) for k, v in (metadata or {}).items()}, format)
