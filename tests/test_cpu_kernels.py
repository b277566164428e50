"""The equivalence tests (gradient accumulation, resume, zero-weight identity) under other CPU kernels.

Intel and AMD machines, and AVX-512 and AVX2 machines, round differently: ATen picks its vectorised kernels (sums,
softmax, norms) by the CPU's capability and MKL/oneDNN pick GEMM kernels and blocking by CPU and shape. A comparison
that holds only with this machine's kernels fails elsewhere (an MLAC float32 comparison once did). These tests rerun
the equivalence tests in a subprocess with the kernels of a lesser CPU forced (`ATEN_CPU_CAPABILITY`,
`MKL_ENABLE_INSTRUCTIONS`, `ONEDNN_MAX_CPU_ISA`), which changes the rounding the way another machine would.
"""

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

EQUIVALENCE_TESTS = [
    "tests/test_booster.py",
    "tests/test_mlac.py",
    "tests/test_unlearn.py",
    "tests/test_mistake_sft.py",
    "-k",
    "gradient_accumulation or resume or identical",
]
VARIANTS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_equivalence_tests_hold_with_the_kernels_of_another_cpu(variant):
    env = {**os.environ, **VARIANTS[variant]}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = {"avx2": "AVX2", "scalar": "DEFAULT"}[variant]
    if probe.stdout.strip() != expected:
        pytest.skip(f"this torch build or CPU cannot run ATen's {expected} kernels (got {probe.stdout.strip()!r})")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *EQUIVALENCE_TESTS]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail
