"""The GPU check's stages in order, each recorded in the report, which is rewritten after each one."""

from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from reranker_common import EXIT_FAILURE, EXIT_OK, Progress

from .gpu_check import DRY_RUN, GpuCheckSettings
from .gpu_check_report import write_report

T = TypeVar("T")
LOG_NAME = "gpu-check.log"
TRITON_LOG_NAME = "tritonserver.log"
NOT_MEASURED = "not-measured"
FP16_NOTE_GPU = (
    "Computed with PyTorch on CUDA (model.half().cuda() against model.float().cuda()): onnxruntime on this "
    "machine is CPU-only, so the exported FP16 graph itself is not run on the GPU here."
)
FP16_NOTE_CPU = "Dry run: PyTorch on the CPU (model.half() against model.float()), tiny architecture."
RANDOM_WEIGHTS_NOTE = (
    "Random weights give logits that barely differ between passages, so FP16 rounding reorders near-ties: "
    "max |Δlogit| is the figure to read; top-5 overlap and Kendall tau mean more on a trained model."
)


class _Failed(Exception):
    """A stage failed (its error is already in the report)."""


class Check:
    """The report being built, its writer and the stage bookkeeping."""

    def __init__(self, settings: GpuCheckSettings, command: str, progress: Progress) -> None:
        self.settings = settings
        self.started = time.perf_counter()
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        self.log = (settings.output_dir / LOG_NAME).open("w", encoding="utf-8")
        self._progress = progress
        self.report: dict[str, Any] = {
            "schema": 1,
            "tool": "reranker_bench.gpu_check",
            "command": command,
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "mode": settings.mode,
            "runtime": DRY_RUN if settings.dry_run else NOT_MEASURED,
            "runtime_reason": "dry run on the CPU: no GPU figures" if settings.dry_run else None,
            "settings": {
                "device": settings.device,
                "measure": settings.measure,
                "export": settings.export,
                "onnx_check": settings.onnx_check,
                "plan": asdict(settings.plan),
                "candidates": settings.candidates,
                "seed": settings.seed,
            },
            "stages": {},
            "problems": [],
        }

    def say(self, message: str) -> None:
        self._progress(message)
        self.log.write(f"[{time.perf_counter() - self.started:7.1f}s] {message}\n")
        self.log.flush()

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        write_report(self.report, self.settings.output_dir)

    def stage(self, name: str, work: Callable[[], T]) -> T:
        """Run one stage; record ok or failed (raising ``_Failed``), then rewrite the report."""
        self.say(f"{name} ...")
        began = time.perf_counter()
        try:
            value = work()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            self.report["stages"][name] = {"status": "failed", "seconds": time.perf_counter() - began, "error": error}
            self.report["problems"].append(f"{name} failed: {error}")
            self.say(f"{name} failed: {error}")
            self.write()
            raise _Failed(name) from exc
        self.report["stages"][name] = {"status": "ok", "seconds": round(time.perf_counter() - began, 1)}
        self.say(f"{name}: ok ({time.perf_counter() - began:.1f} s)")
        self.write()
        return value

    def skip(self, name: str, reason: str) -> None:
        self.report["stages"][name] = {"status": "skipped", "reason": reason}
        self.say(f"{name}: skipped ({reason})")
        self.write()


@contextmanager
def _work_dir(settings: GpuCheckSettings) -> Iterator[Path]:
    if settings.work_dir is not None:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        yield settings.work_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="reranker-gpu-check-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_gpu_check(settings: GpuCheckSettings, *, command: str, progress: Progress) -> tuple[dict[str, Any], int]:
    """Run every stage; returns the report (also written to ``settings.output_dir``) and the exit code."""
    check = Check(settings, command, progress)
    try:
        with _work_dir(settings) as work:
            _stages(check, work)
    finally:
        check.write()
        check.log.close()
    return check.report, EXIT_FAILURE if check.report["problems"] else EXIT_OK


def _stages(check: Check, work: Path) -> None:
    from . import gpu_check_stages as stages
    from .models import train_bench_tokenizer

    settings, report = check.settings, check.report
    gpu = not settings.dry_run
    report["modules"] = stages.module_availability()
    report["module_uses"] = stages.OPTIONAL_MODULES
    with suppress(_Failed):  # recorded; the other stages do not need it
        report["hardware"] = check.stage("hardware", lambda: stages.hardware(gpu=gpu))
    try:
        tokenizer = check.stage("tokenizer", lambda: train_bench_tokenizer(work / "tokenizer"))
        tokenizer_json = work / "tokenizer" / "tokenizer.json"
        architecture = None if gpu else stages.DRY_RUN_ARCHITECTURE
        model = check.stage("model", lambda: stages.build_model(architecture, tokenizer, seed=settings.seed))
    except _Failed:
        for name in ("fp16_check", "serving", "export_fp32", "export_fp16", "onnx_check"):
            check.skip(name, "needs the tokenizer and the model")
        return
    report["model"] = {
        **stages.describe_model(model),
        "tokenizer_vocab": len(tokenizer),
        "seed": settings.seed,
        "description": (
            "bge-reranker-v2-m3 architecture (24 layers, hidden 1024, vocabulary 250,002), random weights"
            if gpu
            else "tiny XLM-R (2 layers, hidden 64), random weights"
        ),
    }
    from reranker_export.settings import Profile, ServingSettings

    serving = ServingSettings(profile=Profile.CPU, tokenizer_instances=settings.tokenizer_instances)
    device = settings.device
    copies: dict[str, Any] = {}
    torch_fp32: Any = None

    def fp16_check() -> dict[str, Any]:
        nonlocal torch_fp32
        copies["fp32"], copies["fp16"] = stages.device_copies(model, device)
        inputs = stages.probe_set(tokenizer, serving.tokenizer)
        torch_fp32 = stages.device_logits(copies["fp32"], inputs, device)
        figures = stages.fp16_figures(torch_fp32, stages.device_logits(copies["fp16"], inputs, device))
        del copies["fp32"]  # the FP16 copy serves; the FP32 one is done
        _release(device)
        return {
            "engine": f"pytorch ({device})",
            "device": device,
            "note": FP16_NOTE_CPU if settings.dry_run else FP16_NOTE_GPU,
            "weights_note": RANDOM_WEIGHTS_NOTE,
            **figures,
        }

    try:
        report["fp16_check"] = check.stage("fp16_check", fp16_check)
        check.write()
        if not report["fp16_check"]["within_tolerance"]:
            report["problems"].append(
                f"FP16 differs from FP32 by {report['fp16_check']['max_abs_diff']:.3g} (max |Δlogit|), "
                f"over the export's tolerance {report['fp16_check']['tolerance']:g}"
            )
    except _Failed:
        pass

    if not settings.measure:
        check.skip("serving", "dry run (add --measure)" if settings.dry_run else "--skip-measure")
    elif "fp16" not in copies:
        check.skip("serving", "needs the FP16 model of the fp16_check stage")
    else:
        from .gpu_check_measure import measure_serving

        try:
            report["serving"] = {}
            check.stage(
                "serving",
                lambda: measure_serving(
                    check, model=copies["fp16"], tokenizer_json=tokenizer_json, serving=serving, work=work
                ),
            )
        except _Failed:
            pass
    copies.clear()
    _release(device)

    if not settings.export:
        for name in ("export_fp32", "export_fp16", "onnx_check"):
            check.skip(name, "--skip-export")
        return
    report["export"] = {}
    fp32_path, fp16_path = work / "onnx" / "model.onnx", work / "onnx-fp16" / "model.onnx"
    try:
        report["export"]["fp32"] = check.stage("export_fp32", lambda: stages.export_fp32(model, fp32_path))
        check.write()
        report["export"]["fp16"] = check.stage("export_fp16", lambda: stages.export_fp16(fp32_path, fp16_path))
    except _Failed:
        check.skip("onnx_check", "needs both exported graphs")
        return
    if not settings.onnx_check:
        report["onnx_check"] = {"skipped": "onnxruntime here is CPU-only and slow at full size (--onnx-check runs it)"}
        check.skip("onnx_check", report["onnx_check"]["skipped"])
        return
    if torch_fp32 is None:
        check.skip("onnx_check", "needs the PyTorch FP32 logits of the fp16_check stage")
        return
    inputs = stages.probe_set(tokenizer, serving.tokenizer)
    try:
        report["onnx_check"] = check.stage(
            "onnx_check", lambda: stages.onnx_check(fp32_path, fp16_path, inputs, torch_fp32)
        )
        if not report["onnx_check"]["fp16_vs_fp32"]["within_tolerance"]:
            report["problems"].append("the FP16 graph differs from the FP32 graph past the export's tolerance")
    except _Failed:
        pass


def _release(device: str) -> None:
    """Give freed device memory back (other processes, the Triton step, use the same GPU)."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
