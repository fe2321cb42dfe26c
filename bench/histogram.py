"""Micro-benchmark: StreamingHistogram.collect throughput against a plain ``x.min(); x.max()`` baseline.

Both are timed in the same run on the same tensors, interleaved, best of the repeats (the median ratio is reported
too); the last line printed is a JSON object.

    python bench/histogram.py [--device cuda] [--numel 4194304] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from anna.calibrate.histogram import StreamingHistogram


def _time_pair(fns: tuple[Callable[[], object], ...], device: torch.device, repeats: int) -> list[list[float]]:
    """Seconds per call of each function, interleaved so that both see the same machine load."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns:  # warm-up
        fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Time collect and the min/max baseline per dtype and print a table, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--numel", type=int, default=1 << 22, help="elements per collected tensor")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = (torch.randn(args.numel, device=device) * 3).to(dtype).reshape(-1, 64)
        h = StreamingHistogram()

        def baseline(x: torch.Tensor = x) -> None:
            x.min()
            x.max()

        def collect(x: torch.Tensor = x, h: StreamingHistogram = h) -> None:
            h.collect(x)

        base_times, collect_times = _time_pair((baseline, collect), device, args.repeats)
        t_base, t_collect = min(base_times), min(collect_times)  # best of: least disturbed by other load
        row = {
            "dtype": str(dtype).removeprefix("torch."),
            "collect_elems_per_s": args.numel / t_collect,
            "minmax_elems_per_s": args.numel / t_base,
            "slowdown_vs_minmax": t_collect / t_base,
            "slowdown_vs_minmax_median": statistics.median(collect_times) / statistics.median(base_times),
            "collect_ms": t_collect * 1e3,
            "minmax_ms": t_base * 1e3,
        }
        results.append(row)
        print(
            f"{row['dtype']:>9}  collect {row['collect_elems_per_s'] / 1e9:6.3f} Gelem/s ({row['collect_ms']:7.2f} ms)"
            f"   min+max {row['minmax_elems_per_s'] / 1e9:6.3f} Gelem/s ({row['minmax_ms']:7.2f} ms)"
            f"   ratio {row['slowdown_vs_minmax']:5.2f}x"
        )
    summary = {
        "bench": "histogram.collect",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "numel": args.numel,
        "repeats": args.repeats,
        "state_bytes": StreamingHistogram().nbytes,
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
