"""Overhead of the Python array API: mcompress.gptq on a 4096x4096 layer called from Python vs the same
gptq_quantize call timed natively inside the extension (_mcompress._bench_gptq_native: the same
at::Tensor inputs, no Python in the loop), alternating in one process, median of N runs each. Also checks
that a C-contiguous float32 input reaches C++ without a copy (the address C++ reads == arr.ctypes.data).

    PYTHONPATH=build-py/python /usr/bin/python3 bench/bench_python_gptq.py [--n 3] [--size 4096] [--rows 8192]

Goal (issue 8): Python / native <= 1.05.
"""
import argparse
import statistics
import time

import numpy as np

import mcompress
from mcompress import _mcompress


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3, help="runs of each (median)")
    ap.add_argument("--size", type=int, default=4096, help="the layer is size x size")
    ap.add_argument("--rows", type=int, default=8192, help="calibration rows of X (H = 2/n XᵀX)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--act-order", action="store_true")
    a = ap.parse_args()

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    X = rng.standard_normal((a.rows, a.size), dtype=np.float32)
    H = mcompress.hessian(X)  # positive definite with rows >= size: the Cholesky succeeds
    del X
    W = rng.standard_normal((a.size, a.size), dtype=np.float32)
    print(f"setup: X {a.rows}x{a.size}, H and W {a.size}x{a.size} in {time.perf_counter() - t0:.1f} s")

    for name, arr in (("W", W), ("H", H)):
        addr, copied = _mcompress._input_address(arr)
        print(f"zero-copy {name}: C++ reads {addr:#x}, numpy buffer {arr.ctypes.data:#x}: "
              f"{'NO COPY' if addr == arr.ctypes.data and not copied else 'COPIED'}")

    py, native = [], []
    def run_python():
        t0 = time.perf_counter()
        q = mcompress.gptq(W, H, bits=a.bits, group_size=a.group_size, act_order=a.act_order)
        py.append(time.perf_counter() - t0)
        del q

    def run_native():
        native.extend(_mcompress._bench_gptq_native(W, H, a.bits, a.group_size, a.act_order, 1))

    for i in range(a.n):
        # alternating, and which goes first alternates too (the second of a pair finds warm caches/pages)
        for f in ((run_python, run_native) if i % 2 == 0 else (run_native, run_python)):
            f()
        print(f"run {i + 1}/{a.n}: python {py[-1]:.3f} s, native {native[-1]:.3f} s", flush=True)
    mp, mn = statistics.median(py), statistics.median(native)
    # The fixed cost of the Python path (argument checks, input views, result dict, output arrays) is
    # independent of the layer size: measure it on a tiny layer where it is not lost in the noise of a
    # multi-second call on a shared machine.
    w, h = W[:64, :64].copy(), np.eye(64, dtype=np.float32) * 2
    tp, tn = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        mcompress.gptq(w, h, bits=a.bits, group_size=32, act_order=a.act_order)
        tp.append(time.perf_counter() - t0)
        tn += _mcompress._bench_gptq_native(w, h, a.bits, 32, a.act_order, 1)
    fixed = statistics.median(tp) - statistics.median(tn)
    print(f"fixed per-call overhead of the Python path (64x64 layer, median of 200): {1e6 * fixed:.1f} us "
          f"= {100 * fixed / mn:.4f}% of the {a.size}x{a.size} call")
    print(f"gptq {a.size}x{a.size} int{a.bits} g{a.group_size}{' act_order' if a.act_order else ''}: "
          f"python {mp:.3f} s, native {mn:.3f} s (median of {a.n}); overhead ratio {mp / mn:.4f} "
          f"({100 * (mp / mn - 1):+.2f}%, goal <= +5%); best of {a.n}: python {min(py):.3f} s, native "
          f"{min(native):.3f} s, ratio {min(py) / min(native):.4f}")


if __name__ == "__main__":
    main()
