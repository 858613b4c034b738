"""Is bf16 native on this CPU? bf16 against float32 at the default job's GEMM shapes, beside what
`model.*_dtype=auto` chose (`rlvr.runtime.sizing.native_bf16`).

    .venv/bin/python -m benchmarks.micro.bf16_native [--threads 2] [--repeats 5] [--out PATH]

SmolLM2-135M's shapes (hidden 576, MLP 1536, vocabulary 49,152): the learner's GEMMs over a packed
row of 512 positions, and a decode step's over 8 sequences. Each is timed in both dtypes in this one
process, alternating, and reported as GFLOP/s and bf16 ÷ float32 time. Where bf16 is emulated (no
avx512_bf16, amx_bf16 or Arm bf16) the ratio is far above 1, and `auto` should have said float32.
Prints JSON (and writes --out).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from benchmarks.common import OUT, median_seconds, write_report

HIDDEN, MLP, VOCAB = 576, 1536, 49_152
SHAPES = {  # (rows, inner, columns)
    "learner_mlp_up": (512, HIDDEN, MLP),
    "learner_mlp_down": (512, MLP, HIDDEN),
    "learner_lm_head": (128, HIDDEN, VOCAB),
    "decode_mlp_up": (8, HIDDEN, MLP),
    "decode_lm_head": (8, HIDDEN, VOCAB),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT / "bf16_native.json")
    args = p.parse_args()
    import torch

    from rlvr.runtime.sizing import native_bf16

    torch.set_num_threads(args.threads)
    shapes = {}
    for name, (m, k, n) in SHAPES.items():
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b  # warm-up: oneDNN builds its kernel
            seconds[str(dtype).removeprefix("torch.")] = median_seconds(lambda: a @ b, args.repeats)
        flops = 2 * m * k * n
        shapes[name] = {"shape": [m, k, n], **{f"{d}_gflops": round(flops / s / 1e9, 2) for d, s in seconds.items()},
                        "bf16_over_fp32_time": round(seconds["bfloat16"] / seconds["float32"], 2)}
        print(name, shapes[name], flush=True)
    write_report({
        "cpu": platform.processor() or platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(None),
        "threads": args.threads,
        "shapes": shapes,
    }, args.out)


if __name__ == "__main__":
    main()
