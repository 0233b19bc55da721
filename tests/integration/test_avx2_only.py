"""``bench/avx2_only/run.sh``: a command run through it sees an AVX2-only CPU, in the instruction the numeric
libraries read (cpuid) and in the file the app reads (/proc/cpuinfo), so the AVX2 code paths can be measured on a CPU
that has more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

PROBE = """
import torch
from scoring import engines
print(torch.backends.cpu.get_cpu_capability(), engines.cpu_has_int8_dot(), engines.cpu_has_native_bf16())
"""


def _can_hide() -> bool:
    """Root with gcc and a private mount namespace, on an AVX-512 CPU with CPUID faulting."""
    if not (shutil.which("gcc") and shutil.which("unshare") and "cpuid_fault" in FLAGS and "avx512f" in FLAGS):
        return False
    return hasattr(os, "geteuid") and os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"]).returncode == 0


@pytest.mark.skipif(not _can_hide(), reason="needs root, gcc, unshare and an AVX-512 CPU with CPUID faulting")
def test_a_command_run_through_it_sees_avx2_only(tmp_path):
    seen = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT)
    hidden = subprocess.run([str(ROOT / "bench" / "avx2_only" / "run.sh"), sys.executable, "-c", PROBE],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    assert hidden.returncode == 0, hidden.stderr[-2000:]
    assert seen.stdout.split()[0] != "AVX2"  # the CPU itself has more ...
    assert hidden.stdout.split() == ["AVX2", "False", "False"]  # ... and the command saw neither it nor VNNI or bf16
