#!/usr/bin/env python3
"""PyTorch's float32 sgemm on the CUDA device, for comparison with ember's.

    python3 scripts/bench/gpu_torch.py [--quick] [--size N] [--repeats R]

Measures what scripts/bench/gpu.lua's gpu.sgemm line measures, the same way:
an N x N x N float32 product (N = 4096 unless --size says otherwise, 1024
with --quick), TF32 off so that both do full float32 arithmetic, two warm-up
calls, then the median of R timed calls, each ended by
torch.cuda.synchronize(). Prints one JSON line:
{"bench":"torch_sgemm", "tflops": 2 N^3 / median time / 1e12, ...}, or
{"bench":"torch_sgemm","skipped":"<reason>"} when there is no PyTorch or no
CUDA device.
"""
import argparse
import json
import statistics
import sys
import time


def emit(fields):
    print(json.dumps(dict(bench="torch_sgemm", **fields), sort_keys=True,
                     separators=(",", ":")))
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smaller product and fewer calls")
    parser.add_argument("--size", type=int, default=None,
                        help="N of the N x N x N product (default 4096)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls (default 10, 3 with --quick)")
    args = parser.parse_args()
    n = args.size or (1024 if args.quick else 4096)
    repeats = args.repeats or (3 if args.quick else 10)

    try:
        import torch
    except ImportError as e:
        emit({"skipped": "no PyTorch: %s" % e})
        return 0
    if not torch.cuda.is_available():
        emit({"skipped": "no CUDA device found"})
        return 0

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(1)
    a = torch.randn(n, n, device="cuda", dtype=torch.float32)
    b = torch.randn(n, n, device="cuda", dtype=torch.float32)
    for _ in range(2):
        torch.mm(a, b)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    emit({
        "m": n, "k": n, "n": n, "dtype": "float32", "repeats": repeats,
        "tf32": False, "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "tflops": 2.0 * n ** 3 / t / 1e12,
        "ms_median": t * 1e3, "ms_min": min(times) * 1e3,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
