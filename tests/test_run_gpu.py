"""benchmarks/run_gpu.sh survives the GPU machine's image, which has no soundfile and no soxr: its collection path
(``run_gpu.sh --collect-only``: the GPU test files it selects, then the GPU benchmark cases) runs here in a
subprocess with both modules made unimportable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_gpu.sh"
MISSING = ("soundfile", "soxr")


@pytest.fixture(scope="module")
def image_env(tmp_path_factory):
    """The environment of a process that cannot import soundfile or soxr: stub modules first on PYTHONPATH."""
    stubs = tmp_path_factory.mktemp("gpu_image")
    for name in MISSING:
        message = f"No module named {name!r}"
        (stubs / f"{name}.py").write_text(f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    env = {**os.environ, "PYTHON": sys.executable}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs), env.get("PYTHONPATH")]))
    env.pop("TRITON_INTERPRET", None)  # as on the GPU machine; tests/conftest.py sets it again without CUDA
    return env


@pytest.mark.parametrize("module", MISSING)
def test_stubs_make_the_audio_modules_unimportable(image_env, module):
    run = subprocess.run([sys.executable, "-c", f"import {module}"], env=image_env, capture_output=True, text=True)
    assert run.returncode != 0 and "ModuleNotFoundError: No module named" in run.stderr, run.stderr[-500:]


def test_the_data_package_imports_without_them(image_env):
    """Stores, series and strokes need neither (they are imported when an audio file is read)."""
    run = subprocess.run([sys.executable, "-c", "import vrnn_fast.data, vrnn_fast.train"], env=image_env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]


def test_collection_needs_neither_soundfile_nor_soxr(image_env):
    run = subprocess.run(["bash", str(SCRIPT), "--collect-only"], env=image_env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    collected = {line.split("::")[0] for line in run.stdout.splitlines() if "::" in line}
    selected = {"tests/test_kernels_densities.py", "tests/test_kernels_lstm_gaussian.py", "tests/test_triton_model.py",
                "tests/test_sm90_compile.py", "tests/test_graphs.py", "tests/test_loader_cuda.py"}
    assert selected <= collected
    assert not collected & {"tests/test_data.py", "tests/test_cli.py", "tests/test_train.py"}
    assert {"benchmarks/bench_kernels.py", "benchmarks/bench_model.py"} <= collected
    assert "fast-triton-graphed" in run.stdout
    assert "test_cpu_" not in run.stdout  # the CPU group is deselected
