"""Signatures for compiling kernels ahead of time for the H100 (sm_90), without a GPU.

Each kernel module's ``sm90_compile_cases()`` returns ``(name, jit_fn, signature, constexprs)`` tuples built
here, for ``triton.compile(ASTSource(jit_fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))``
(tests/test_sm90_compile.py, benchmarks/kernel_resources.py).
"""

from __future__ import annotations

import torch

TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def compile_case(name: str, fn, dtype: torch.dtype, constexprs: dict, unit_strides: tuple[str, ...] = (),
                 fp32_ptrs: tuple[str, ...] = (), u8_ptrs: tuple[str, ...] = (), i64_args: tuple[str, ...] = (),
                 float_args: tuple[str, ...] = ("floor",)) -> tuple[str, object, dict, dict]:
    """The (name, fn, signature, constexprs) a launch on contiguous ``dtype`` inputs specialises to.

    Pointers are ``*dtype`` unless listed in ``fp32_ptrs`` (losses) or ``u8_ptrs`` (bool masks); the
    ``unit_strides`` become constexpr 1, as Triton specialises int arguments equal to 1; other ints are i32
    (``i64_args``: i64) and ``float_args`` fp32.
    """
    constexprs = {**constexprs, **{arg: 1 for arg in unit_strides}}
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in fp32_ptrs:
            signature[arg] = "*fp32"
        elif arg in u8_ptrs:
            signature[arg] = "*u8"
        elif arg.endswith("_ptr"):
            signature[arg] = f"*{TRITON_TYPE[dtype]}"
        elif arg in float_args:
            signature[arg] = "fp32"
        else:
            signature[arg] = "i64" if arg in i64_args else "i32"
    return f"{name}[{TRITON_TYPE[dtype]}]", fn, signature, constexprs
