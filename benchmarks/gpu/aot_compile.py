"""Compile the Triton kernel for a Hopper GPU (sm_90) on a machine without one.

Catches what the interpreter cannot: code that does not lower to PTX, register spills, and
scalar instead of 16-byte loads (counts LDG.E.128 in the SASS). Runs every flag combination
the optimizer can ask for, in seconds, with the ptxas/cuobjdump that Triton's wheel carries.

    python benchmarks/gpu/aot_compile.py [--all]
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from adamlab.optim import triton_kernel

SIGNATURE = {
    "table_ptr": "*i64",
    "n": "i32",
    "lr": "fp32",
    "lr_ptr": "*fp32",
    "grad_scale_ptr": "*fp32",
    "found_inf_ptr": "*fp32",
    "w1": "fp32",
    "w2": "fp32",
    "eps": "fp32",
    "weight_decay": "fp32",
}


def compile_one(**flags):
    fn = triton_kernel.adam_family_kernel
    num_warps = flags.pop("num_warps", 4)
    constexprs = dict(flags)
    signature = dict(SIGNATURE, **{k: "constexpr" for k in constexprs})
    aligned = {
        (i,): [["tt.divisibility", 16]] for i, k in enumerate(fn.arg_names) if SIGNATURE.get(k, "").startswith("*")
    }
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


def sass_stats(kernel):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
        sass = subprocess.run([cuobjdump, "--dump-sass", path], capture_output=True, text=True).stdout
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    return {
        "LDG.128": len(re.findall(r"LDG\.E\.128", sass)),
        "STG.128": len(re.findall(r"STG\.E\.128", sass)),
        "LDG": len(re.findall(r"LDG\.E", sass)),
        "regs": int(regs.group(1)) if regs else None,
        "local_bytes": int(local.group(1)) if local else None,
    }


def main() -> int:
    base = dict(
        YOGI=True, BIAS_CORRECTION=True, AMSGRAD=False, MAXIMIZE=False, DECOUPLED=False, HAS_WEIGHT_DECAY=False,
        LR_ON_DEVICE=False, HAS_GRAD_SCALE=False, HAS_FOUND_INF=False, P_DTYPE=tl.float32, G_DTYPE=tl.float32,
        S_DTYPE=tl.float32, ALIGNED=True, BLOCK=1024,
    )  # fmt: skip
    variants = [dict(base), dict(base, YOGI=False), dict(base, ALIGNED=False)]
    variants += [
        dict(base, P_DTYPE=tl.bfloat16, G_DTYPE=tl.bfloat16),
        dict(base, P_DTYPE=tl.bfloat16, G_DTYPE=tl.bfloat16, S_DTYPE=tl.bfloat16),
    ]
    variants += [dict(base, P_DTYPE=tl.float16, G_DTYPE=tl.float16)]
    flags = ["AMSGRAD", "MAXIMIZE", "DECOUPLED", "HAS_WEIGHT_DECAY", "LR_ON_DEVICE", "HAS_GRAD_SCALE", "HAS_FOUND_INF"]
    if "--all" in sys.argv:
        for yogi, bc, bits in itertools.product(
            (False, True), (False, True), itertools.product((False, True), repeat=len(flags))
        ):
            variants.append(dict(base, YOGI=yogi, BIAS_CORRECTION=bc, **dict(zip(flags, bits))))
    else:
        for yogi, bc in itertools.product((False, True), (False, True)):
            variants.append(dict(base, YOGI=yogi, BIAS_CORRECTION=bc, **{f: True for f in flags}))
    variants += [dict(base, BLOCK=2048, num_warps=8), dict(base, BLOCK=4096, num_warps=8)]
    failures = 0
    for v in variants:
        label = " ".join(f"{k}={getattr(val, 'name', val)}" for k, val in v.items() if base.get(k) != val)
        try:
            stats = sass_stats(compile_one(**v))
            print(f"ok   {label or 'default (Yogi, fp32, bias correction)'}: {stats}")
            if stats["local_bytes"]:
                failures += 1
        except Exception as error:
            failures += 1
            print(f"FAIL {label}: {type(error).__name__}: {str(error)[:2000]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
