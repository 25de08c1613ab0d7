"""Registers, shared memory and spills of every Triton kernel compiled for the H100 (sm_90), without a GPU.

Each module in ``vrnn_fast.kernels`` named in KERNEL_MODULES provides ``sm90_compile_cases()`` -> [(name, jit_fn,
signature, constexprs)] at the paper's shapes; a module that does not exist yet is skipped by name. Every case
goes through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, and the ``cuobjdump
-res-usage`` bundled in the triton wheel reads the cubin: REG (registers per thread), SHARED (bytes per block),
STACK and LOCAL (bytes per thread; nonzero means spilled registers). The kept output is
``benchmarks/kernel_resources.txt``.

Usage: ``python benchmarks/kernel_resources.py [--check]`` (``--check``: exit 1 if any kernel spills).
"""

import os

os.environ.pop("TRITON_INTERPRET", None)  # compile for real: set before triton is imported

import argparse  # noqa: E402
import importlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

KERNEL_MODULES = ("lstm", "gaussian", "densities", "recurrence")
TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def collect_cases() -> tuple[list[tuple[str, tuple]], list[str]]:
    """([(module, case)], [modules skipped because they do not exist])."""
    cases, missing = [], []
    for name in KERNEL_MODULES:
        try:
            module = importlib.import_module(f"vrnn_fast.kernels.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"vrnn_fast.kernels.{name}":
                raise
            missing.append(name)
            continue
        cases += [(name, case) for case in module.sm90_compile_cases()]
    return cases, missing


def resources(case: tuple) -> dict:
    """Compiles one (name, fn, signature, constexprs) case for sm_90 and reads its cubin's resource usage."""
    _, fn, signature, constexprs = case
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=TARGET)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        report = subprocess.run([str(CUOBJDUMP), "-res-usage", cubin.name], capture_output=True, text=True,
                                check=True).stdout
    match = _USAGE.search(report)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's report: {report!r}")
    regs, stack, shared, local = map(int, match.groups())
    return dict(regs=regs, stack=stack, shared=shared, local=local, warps=kernel.metadata.num_warps,
                spills=stack > 0 or local > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any kernel spills")
    args = parser.parse_args()
    cases, missing = collect_cases()
    print(f"triton {triton.__version__}, target {TARGET.backend} sm_{TARGET.arch} (cuobjdump -res-usage on the cubin)")
    if missing:
        print(f"skipped (module not there yet): {', '.join(missing)}")
    header = f"{'module':<10} {'kernel[shapes;tile;flags][input dtype]':<78} {'warps':>5} {'REG':>4} " \
             f"{'SHARED':>6} {'STACK':>5} {'LOCAL':>5}  spills"
    print(header)
    print("-" * len(header))
    spilled = 0
    for module, case in cases:
        r = resources(case)
        spilled += r["spills"]
        print(f"{module:<10} {case[0]:<78} {r['warps']:>5} {r['regs']:>4} {r['shared']:>6} {r['stack']:>5} "
              f"{r['local']:>5}  {'SPILLS' if r['spills'] else 'no'}", flush=True)
    print(f"{len(cases)} kernels compiled, {spilled} spilling")
    return 1 if args.check and spilled else 0


if __name__ == "__main__":
    sys.exit(main())
