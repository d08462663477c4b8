"""The model half of the GPU check: what the machine has, the random-weight model, FP16 checks, export.

The FP16 figures are the export's own metrics (``reranker_export.validation.check_fp16`` on the
probe set of ``reranker_export.probes``); only where the logits come from differs: PyTorch on a
device here (``model.half()`` against ``model.float()``), ONNX Runtime in the export.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .machine import machine_info
from .models import Architecture

if TYPE_CHECKING:
    from reranker_export.settings import TokenizerSettings

INPUT_NAMES = ("input_ids", "attention_mask")
DRY_RUN_ARCHITECTURE = Architecture(layers=2, hidden=64, heads=4, intermediate=128)
"""Tiny XLM-R for the CPU dry run: the same stages in seconds (vocabulary: the tokenizer's)."""

# Modules the stages need beyond torch/transformers/tokenizers/numpy, and which stage needs each.
OPTIONAL_MODULES: dict[str, str] = {
    "onnx": "export",
    "onnxscript": "export (torch.onnx dynamo exporter)",
    "onnxconverter_common": "FP16 conversion",
    "onnxruntime": "ONNX Runtime check (dry run)",
    "scipy": "Kendall tau of the FP16 check",
    "tritonclient": "triton-ensemble (rendering configs, gRPC client)",
    "grpc": "triton-ensemble (gRPC client)",
    "pytriton": "triton-ensemble (tritonserver from nvidia-pytriton)",
}
VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "onnxconverter-common",
    "scipy",
    "tritonclient",
    "grpcio",
    "protobuf",
    "nvidia-pytriton",
)


def module_availability() -> dict[str, bool]:
    """Which optional modules are installed (found, not imported)."""
    found = {}
    for name in OPTIONAL_MODULES:
        try:
            found[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found[name] = False
    return found


def package_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions


def nvidia_driver() -> str | None:
    """The driver version ``nvidia-smi`` reports, ``None`` without it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.strip().splitlines()[0].strip() or None
    return None


def hardware(*, gpu: bool) -> dict[str, Any]:
    """CPU, memory and versions (``machine_info``), torch and CUDA versions, and the GPU when ``gpu``."""
    import torch

    info = machine_info()
    info["versions"] = {**info.get("versions", {}), **package_versions()}
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cpu_count"] = info.get("cores")
    info["gpu"] = None
    if gpu:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "driver": nvidia_driver(),
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(architecture: Architecture | None, tokenizer: Any, *, seed: int) -> Any:
    """XLMRobertaForSequenceClassification with random weights (seeded), FP32 on the CPU, eval mode.

    ``None``: the full-size bge-reranker-v2-m3 config (``bge_reranker_v2_m3_config``, vocabulary
    250,002 whatever the tokenizer's size); else a small config with the tokenizer's vocabulary.
    """
    from transformers import XLMRobertaForSequenceClassification

    from reranker_export.testmodels import bge_reranker_v2_m3_config

    if architecture is None:
        config = bge_reranker_v2_m3_config()
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
    else:
        config = architecture.config(tokenizer)
    with _seeded(seed):
        return XLMRobertaForSequenceClassification(config).eval()


def describe_model(model: Any) -> dict[str, Any]:
    return {
        "architecture": asdict(Architecture.from_config(model.config)),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "weights": "random",
    }


def device_copies(model: Any, device: str) -> tuple[Any, Any]:
    """(FP32, FP16) copies of ``model`` on ``device``; ``model`` itself stays FP32 on the CPU."""
    import torch

    fp32 = copy.deepcopy(model).to(device=device, dtype=torch.float32)
    fp16 = copy.deepcopy(model).to(device=device, dtype=torch.float16)
    return fp32.eval(), fp16.eval()


def probe_set(tokenizer: Any, settings: TokenizerSettings) -> dict[str, np.ndarray]:
    """The export's probe set (every probe query x every probe passage), FlagReranker pair semantics."""
    from reranker_export.validation import probe_inputs

    return probe_inputs(
        tokenizer,
        max_length=settings.max_length,
        query_max_length=settings.effective_query_max_length,
        input_names=INPUT_NAMES,
    )


def device_logits(model: Any, inputs: dict[str, np.ndarray], device: str) -> np.ndarray:
    """Logits (FP32 numpy) of ``inputs``, in the export validation's batches of rows."""
    import torch

    from reranker_export.validation import BATCH

    rows = len(inputs["input_ids"])
    out = []
    with torch.inference_mode():
        for start in range(0, rows, BATCH):
            feed = {k: torch.from_numpy(v[start : start + BATCH]).to(device) for k, v in inputs.items()}
            out.append(model(**feed).logits.float().cpu().numpy().reshape(-1))
    return np.concatenate(out)


def fp16_figures(fp32: np.ndarray, fp16: np.ndarray) -> dict[str, Any]:
    """The export's FP16 metrics, recorded whatever their value; ``within_tolerance`` says if they pass.

    ``check_fp16`` raises past its tolerance; it runs with none here so the figures are kept,
    and the verdict uses the export's own tolerance.
    """
    from reranker_export.validation import FP16_TOLERANCE, check_fp16

    try:
        report = check_fp16(fp32, fp16, tolerance=math.inf).as_dict()
    except ModuleNotFoundError as exc:  # scipy (Kendall tau) is missing: keep the figure that needs nothing
        report = {
            "pairs": len(fp32),
            "max_abs_diff": float(np.max(np.abs(fp32 - fp16))),
            "top5_overlap": None,
            "kendall_tau": None,
            "unavailable": f"top-5 overlap and Kendall tau not computed: {exc}",
        }
    report["tolerance"] = FP16_TOLERANCE
    report["within_tolerance"] = bool(report["max_abs_diff"] <= FP16_TOLERANCE)
    return report


def export_fp32(model: Any, path: Path) -> dict[str, Any]:
    from reranker_export.onnx_export import export_onnx

    started = time.perf_counter()
    export_onnx(model, path, input_names=INPUT_NAMES)
    return {"file": path.name, "bytes": onnx_bytes(path), "seconds": round(time.perf_counter() - started, 1)}


def export_fp16(fp32_path: Path, path: Path) -> dict[str, Any]:
    from reranker_export.fp16 import convert_to_fp16

    started = time.perf_counter()
    with warnings.catch_warnings():  # one warning per weight clipped to FP16's range: thousands at full size
        warnings.simplefilter("ignore")
        convert_to_fp16(fp32_path, path)
    return {"file": path.name, "bytes": onnx_bytes(path), "seconds": round(time.perf_counter() - started, 1)}


def onnx_bytes(path: Path) -> int:
    """The graph and its external-data sidecar, if any."""
    from reranker_export.onnx_export import external_data_name

    sidecar = path.with_name(external_data_name(path))
    return path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)


def onnx_check(fp32_path: Path, fp16_path: Path, inputs: dict[str, np.ndarray], torch_fp32: np.ndarray) -> dict:
    """The export's own checks in ONNX Runtime (CPU): FP32 graph against PyTorch, FP16 graph against FP32."""
    from reranker_export.validation import check_parity, onnx_logits

    ort32 = onnx_logits(fp32_path, inputs)
    parity = check_parity(torch_fp32, ort32).as_dict()
    return {
        "engine": "onnxruntime (CPU)",
        "fp32_vs_pytorch": parity,
        "fp16_vs_fp32": fp16_figures(ort32, onnx_logits(fp16_path, inputs)),
    }
