"""Counting what a step dispatches: the GPU launch cost every CPU can see.

``count_ops(fn)`` runs ``fn`` once under a TorchDispatchMode and returns an :class:`OpCount`: every aten op
that reaches the dispatcher (view-like ops excluded: they launch nothing; a ``torch.library.custom_op`` is
counted by what its implementation dispatches, since that is what the GPU runs), the Triton kernel launches
(JIT or interpreter), and the ops that force a host synchronisation or a data-dependent shape (``.item()``,
``nonzero``, device-to-host copies, ...), which a CUDA graph or ``torch.compile(fullgraph=True)`` cannot hold.

``per_step(make_fn, t_short, t_long)``: the slope of the counts between two sequence lengths, i.e. what one
more time step costs (the per-call work, parameters, losses, optimiser, cancels out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that wait for the device or whose output shape depends on data.
SYNC_OPS = frozenset({
    "aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.nonzero_static",
    "aten.masked_select", "aten.unique", "aten._unique", "aten._unique2", "aten.unique_consecutive",
    "aten.unique_dim", "aten.equal", "aten.allclose", "aten.repeat_interleave", "aten._assert_scalar",
})


@dataclass
class OpCount:
    """ops: aten op name -> calls (views excluded); triton: Triton launches; syncs: the SYNC_OPS seen and
    device-to-host copies, by name."""

    ops: Counter = field(default_factory=Counter)
    triton: int = 0
    syncs: Counter = field(default_factory=Counter)
    _in_launch: bool = field(default=False, repr=False)  # the interpreter's own copies are not counted

    @property
    def aten(self) -> int:
        return sum(self.ops.values())

    @property
    def total(self) -> int:
        """aten ops + Triton launches: the launches a GPU would see."""
        return self.aten + self.triton


def _is_view(func) -> bool:
    return getattr(func, "is_view", False) or func._schema.name in ("aten::detach", "aten::alias", "aten::lift_fresh")


def _to_host(func, args, kwargs) -> bool:
    """A copy from a CUDA tensor to the CPU (it waits for the device)."""
    if func.__name__.split(".")[0] not in ("_to_copy", "copy_"):
        return False
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    dev = kwargs.get("device")
    to_cpu = (dev is not None and torch.device(dev).type == "cpu") or (
        func.__name__.startswith("copy_") and tensors and tensors[0].device.type == "cpu")
    return to_cpu and any(t.device.type == "cuda" for t in tensors)


class _Counter(TorchDispatchMode):
    def __init__(self, result: OpCount):
        super().__init__()
        self.result = result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.result._in_launch:
            return func(*args, **kwargs)
        opdef = custom_ops.OPDEFS.get(func._schema.name)
        if opdef is not None:  # a torch.library.custom_op (ours): count what its implementation dispatches
            with self:
                return opdef._init_fn(*args, **kwargs)
        name = f"aten.{func.__name__.split('.')[0]}"
        if name in SYNC_OPS or _to_host(func, args, kwargs):
            self.result.syncs[name] += 1
        if not _is_view(func):
            self.result.ops[name] += 1
        return func(*args, **kwargs)


@contextmanager
def _count_triton(result: OpCount):
    """Counts launches of every Triton kernel (compiled or interpreted) while active."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:  # no triton: nothing to count
        yield
        return
    patched = []
    for cls in (JITFunction, InterpretedFunction):
        real = cls.run

        def run(self, *args, _real=real, **kwargs):
            result.triton += 1
            outer, result._in_launch = result._in_launch, True
            try:
                return _real(self, *args, **kwargs)
            finally:
                result._in_launch = outer

        cls.run = run
        patched.append((cls, real))
    try:
        yield
    finally:
        for cls, real in patched:
            cls.run = real


def count_ops(fn: Callable[[], object]) -> OpCount:
    """Runs ``fn()`` once and counts what it dispatches (see the module docstring)."""
    result = OpCount()
    with _count_triton(result), _Counter(result):
        fn()
    return result


def per_step(make_fn: Callable[[int], Callable[[], object]], t_short: int = 10, t_long: int = 20) -> dict:
    """What one more time step costs: (count at t_long - count at t_short) / (t_long - t_short).

    ``make_fn(T)`` returns the callable to count for sequences of T steps (built outside the count).
    Returns {"aten", "triton", "total", "syncs"} per step (floats; syncs is the count at t_long).
    """
    short, long = count_ops(make_fn(t_short)), count_ops(make_fn(t_long))
    steps = t_long - t_short
    return {"aten": (long.aten - short.aten) / steps, "triton": (long.triton - short.triton) / steps,
            "total": (long.total - short.total) / steps, "syncs": sum(long.syncs.values())}
