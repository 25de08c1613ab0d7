"""pytest setup of the benchmark suite (``pytest benchmarks/ --benchmark-only``).

- Collects ``bench_*.py`` here only: plain ``pytest`` / ``pytest tests`` never see them.
- Keeps the Triton interpreter off: nothing is ever timed under TRITON_INTERPRET.
- ``gpu`` cases skip without CUDA; ``cpu_group`` marks the small CPU group.
- ``--bench-out PATH.json`` writes the results JSON and a markdown table beside it after every case
  (a run cut short still leaves what it measured); ``--bench-budget-s S`` skips the cases that would
  start after S seconds of the session (the script orders the costly ones last); without CUDA it defaults
  to CPU_BUDGET_S, so the CPU group stays short (``--bench-budget-s 0``: no limit).
- ``--bench-threads N``: ``torch.set_num_threads(N)`` for the session (CPU ratios are steadier at 1 on a shared
  machine); ``meta["torch_threads"]`` records the count either way.
- ``ceilings``: the roofline ceilings of the GPU the session runs on (``roofline.device_for``), None on
  a CPU or a GPU without a row in roofline.py (no floors then).
"""

import os

os.environ.pop("TRITON_INTERPRET", None)  # before anything imports triton

import datetime  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402
import pytest  # noqa: E402
import roofline  # noqa: E402
import telemetry  # noqa: E402
import torch  # noqa: E402
from results import Results  # noqa: E402

GPU_SKIP = "needs CUDA: this machine has no GPU, so the GPU benchmark cases are skipped"
CPU_BUDGET_S = 240.0  # the default --bench-budget-s without CUDA: a first torch.compile on a small CPU takes minutes
_START = pytest.StashKey[float]()


def pytest_addoption(parser):
    group = parser.getgroup("vrnn_fast benchmarks")
    group.addoption("--bench-out", default=None, metavar="PATH.json",
                    help="write the results JSON here and the markdown summary beside it (PATH.md)")
    group.addoption("--bench-threads", type=int, default=None, metavar="N",
                    help="torch.set_num_threads(N) for the session (default: torch's own; meta records it)")
    group.addoption("--bench-budget-s", type=float, default=None, metavar="S",
                    help="skip benchmark cases that would start more than S seconds into the session (0: no limit; "
                         f"default: none with CUDA, {CPU_BUDGET_S:.0f} without)")


_results: Results | None = None  # the session's results (set in pytest_configure)
_out_path: Path | None = None


def pytest_configure(config):
    global _results, _out_path
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped with a reason on machines without it")
    config.addinivalue_line("markers", "cpu_group: the small CPU group (runs anywhere; run_gpu.sh deselects it)")
    threads = config.getoption("--bench-threads")
    if threads is not None:
        torch.set_num_threads(threads)
    _results = Results(_meta())
    out = config.getoption("--bench-out")
    _out_path = Path(out) if out else None


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)  # named on the command line: pytest collects it
    return None


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(pytest.mark.skip(reason=GPU_SKIP))


def pytest_sessionstart(session):
    session.config.stash[_START] = time.monotonic()


def _budget(config) -> float:
    """Seconds into the session after which no case starts (0: no limit)."""
    given = config.getoption("--bench-budget-s")
    if given is not None:
        return given
    return 0.0 if torch.cuda.is_available() else CPU_BUDGET_S


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set: kernels are never timed under the interpreter")
    budget = _budget(item.config)
    elapsed = time.monotonic() - item.config.stash[_START]
    if budget and "benchmark" in item.fixturenames and elapsed > budget:
        pytest.skip(f"time budget spent: {elapsed:.0f} s into the session, --bench-budget-s {budget:.0f}")


def pytest_runtest_logreport(report):
    if _results is None:
        return
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _results.note_not_run(report.nodeid, "skipped", reason.removeprefix("Skipped: "))
    elif report.failed:
        lines = report.longreprtext.strip().splitlines() or ["?"]
        _results.note_not_run(report.nodeid, f"failed in {report.when}", lines[-1])
    if report.when == "teardown":
        _write(finished=False)


def pytest_sessionfinish(session, exitstatus):
    if _results is None:
        return
    _results.meta["wall_s"] = round(time.monotonic() - session.config.stash[_START], 1)
    _results.meta["exit_status"] = int(exitstatus)
    _write(finished=True)


def _write(finished: bool) -> None:
    if _out_path is not None:
        _results.meta["finished"] = finished
        _results.write(_out_path)


def _meta() -> dict:
    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cuda = torch.cuda.is_available()
    tele = telemetry.snapshot() if cuda else {}
    device = _ceilings()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, "
                                                                  f"{os.cpu_count()} cores)",
        "ceilings": str(device) if device else "none: no floors (" + (
            f"roofline.py has no row for {torch.cuda.get_device_name()!r})" if cuda else "no GPU)"),
        "torch": torch.__version__, "triton": version("triton"), "pytest_benchmark": version("pytest-benchmark"),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": tele.get("driver"), "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(sys.argv), "torch_threads": torch.get_num_threads(), "telemetry_start": tele,
    }


@pytest.fixture(scope="session")
def results() -> Results:
    return _results


def _ceilings() -> roofline.Device | None:
    return roofline.device_for(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


@pytest.fixture(scope="session")
def ceilings() -> roofline.Device | None:
    """Roofline ceilings of this session's GPU; None without CUDA or for a GPU roofline.py has no row for."""
    return _ceilings()


@pytest.fixture
def time_left(request):
    """A function returning the seconds left of ``--bench-budget-s`` (inf without a budget)."""
    budget = _budget(request.config)

    def left() -> float:
        return budget - (time.monotonic() - request.config.stash[_START]) if budget else float("inf")

    return left


@pytest.fixture(autouse=True)
def _free_memory():
    """Each case starts with the previous case's tensors and cached blocks gone."""
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture
def measure(benchmark, request, results):
    """Time one case and record it: ``measure(fn, group=, case=, mode=, precision=, provider=,
    reference=, device=, frames=, rounds=, warmup=, calls_per_round=1, floor_s=None, **extra)`` -> record.

    The record is the case's ``benchmark.extra_info`` and joins the session's results; ``floor_s`` is
    the roofline floor of one call (GPU cases), ``frames`` the (b, t) frames one call processes.
    """

    def run(fn, *, group, case, mode, precision, provider, reference, device, frames, rounds, warmup,
            calls_per_round=1, floor_s=None, **extra):
        benchmark.group = f"{group} {case} {mode} {precision}"
        timing = harness.time_case(benchmark, fn, device, rounds, warmup, calls_per_round)
        record = benchmark.extra_info
        record.update(name=request.node.nodeid, group=group, case=case, mode=mode, precision=precision,
                      provider=provider, reference=reference, device=str(device), frames=frames,
                      floor_s=floor_s if device.type == "cuda" else None, **timing, **extra)
        if device.type == "cuda":
            record["telemetry"] = telemetry.snapshot(device.index)
        return results.add(record)

    return run
