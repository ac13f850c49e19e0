"""What the benchmarks measure with, shared by train_step.py and scaling.py: a matmul reference,
peak memory (CUDA allocator, or the kernel's peak RSS on the CPU), wall and CPU time of steps, the
machine, and one configuration per fresh subprocess.

A worker prints ``@@phase NAME`` lines (``compile`` before a compiled first step, ``timed`` after
it) and one ``@@row JSON`` line; :func:`run_isolated` reads them.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["PHASE", "ROW", "PeakMemory", "cpu_seconds", "machine_info", "matmul_tflops",
           "matmul_tflops_apart",
           "run_isolated", "sync", "time_steps"]

PHASE, ROW = "@@phase ", "@@row "  # the worker's progress lines on stdout


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def matmul_tflops(device: torch.device | str, dtype: torch.dtype, n: int = 2048, warmup: int = 2,
                  iters: int = 10) -> float:
    """Achieved TFLOP/s of ``(n, n) @ (n, n)`` in ``dtype``, timed like the training step."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b, out=out)
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def matmul_tflops_apart(device: torch.device | str, dtype: torch.dtype, n: int = 2048) -> float:
    """:func:`matmul_tflops` in a fresh Python with this process's thread count, at this moment.

    Not in this process: its operands, freed, would raise glibc's mmap threshold (it follows the
    size of the mapped blocks a process frees), and a step timed after it would then fault less
    than the same step in a plain training loop.
    """
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from measure import matmul_tflops; "
            "torch.set_num_threads(int(sys.argv[2])); "
            "print(matmul_tflops(sys.argv[3], getattr(torch, sys.argv[4]), int(sys.argv[5])))")
    dtype_name = str(dtype).removeprefix("torch.")
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent),
                             str(torch.get_num_threads()), str(device), dtype_name, str(n)],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _proc_status(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next peak is the timed steps' own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    """ru_maxrss in bytes (kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory of the timed steps: CUDA allocator peak, or peak RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = _proc_status("VmRSS") or 0  # before the model exists

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.hwm_reset = _reset_peak_rss()
        self.before = _proc_status("VmRSS") or 0

    def stop(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            return {"peak_memory_bytes": torch.cuda.max_memory_allocated(self.device),
                    "memory_kind": "torch.cuda.max_memory_allocated during the timed steps"}
        if self.hwm_reset and _proc_status("VmHWM") is not None:
            peak, how = _proc_status("VmHWM"), "VmHWM reset before the timed steps"
        else:
            peak, how = _peak_rss(), "ru_maxrss (includes the warm-up's peak)"
        return {"peak_memory_bytes": peak - self.baseline,
                "memory_kind": f"peak RSS during the timed steps minus RSS before the model was "
                               f"built ({how})",
                "peak_rss_bytes": peak, "rss_baseline_bytes": self.baseline,
                "rss_growth_timed_bytes": peak - self.before}



def time_steps(step, count: int, device: torch.device) -> list[float]:
    """Wall time of each of ``count`` calls of ``step`` (synchronised on CUDA)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime



def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "device_name": cpu, "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info



def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_isolated(script: str | Path, spec: dict[str, Any], compile_budget: float, timeout: float
                 ) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh Python and return the row it prints; stop a compile
    over budget or a run over timeout (the row then says so)."""
    base = {**spec["config"], "steps": spec["steps"], "warmup": spec["warmup"]}
    with tempfile.TemporaryDirectory(prefix="arvision-bench-") as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tmp}  # a cold compile for every row
        stderr_path = Path(tmp) / "stderr.txt"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen([sys.executable, str(script), "--worker", json.dumps(spec)],
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
            start = phase_start = time.monotonic()
            phase, row, killed = "setup", None, None
            while True:
                now = time.monotonic()
                if phase == "compile" and now - phase_start > compile_budget:
                    killed = (f"skipped: compile still running after {compile_budget:.0f} s "
                              f"(--compile-budget)")
                elif now - start > timeout:
                    killed = f"skipped: still running after {timeout:.0f} s (--timeout)"
                if killed:
                    proc.kill()
                    break
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    continue
                if line is None:
                    break
                if line.startswith(PHASE):
                    phase, phase_start = line[len(PHASE):].strip(), time.monotonic()
                elif line.startswith(ROW):
                    row = json.loads(line[len(ROW):])
            proc.wait()
        if row is not None:
            return row
        if killed:
            return {**base, "status": "skipped", "error": killed}
        tail = stderr_path.read_text().strip().splitlines()[-3:]
        return {**base, "status": "failed",
                "error": f"worker exited with {proc.returncode}: {' | '.join(tail)[:500]}"}
