"""What a benchmark ran on: CPU, cores, memory, GPU, load, package versions (one place for every report)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = (
    "torch",
    "onnxruntime",
    "tokenizers",
    "transformers",
    "FlagEmbedding",
    "tritonclient",
    "grpcio",
    "nvidia-pytriton",
    "fastapi",
    "uvicorn",
    "numpy",
)


def machine_info(*, gpu: bool = False) -> dict[str, Any]:
    """Platform, Python, CPU model, core counts, memory, the installed versions; the GPU's name if ``gpu``.

    ``cpu`` and the per-socket counts come from ``lscpu`` (``/proc/cpuinfo`` as fallback);
    ``cores`` is ``os.cpu_count()``, ``cpus`` what ``lscpu`` counts (the same on most machines).
    """
    lscpu = _lscpu()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": lscpu.get("Model name") or _proc_cpu_model() or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cpus": int(lscpu.get("CPU(s)", 0) or os.cpu_count() or 0),
        "memory_gib": _memory_gib(),
    }
    with contextlib.suppress(ValueError):
        info["cores_per_socket"] = int(lscpu.get("Core(s) per socket", ""))
        info["threads_per_core"] = int(lscpu.get("Thread(s) per core", ""))
    versions = {}
    for package in VERSIONED_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    info["versions"] = versions
    if gpu:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line: ``CPU model, N cores, Python X`` (the client benchmark's ``hardware:`` line)."""
    return f"{info['cpu']}, {info['cores']} cores, Python {info['python']}"


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15-minute load averages: how busy the machine was around a measurement."""
    return os.getloadavg()


def _lscpu() -> dict[str, str]:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    return {}


def _proc_cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None
