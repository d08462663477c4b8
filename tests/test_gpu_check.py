"""The GPU check (``scripts/gpu-check.sh``, ``reranker_bench.gpu_check``): run for real on the CPU.

Here there is no GPU, so the no-GPU exit runs for real; the dry run goes through every stage on
the CPU with a tiny architecture (export, FP16 conversion, FP16 checks, report), and the serving
stage runs both pipelines on the CPU: in-process, and through a real Triton whose
``reranker_model`` is the PyTorch step the GPU run uses. Only the run on a CUDA GPU is marked ``gpu``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reranker_bench import gpu_check
from reranker_bench.errors import BenchmarkError
from reranker_bench.gpu_check import DRY_RUN_PLAN, GPU_PLAN, GpuCheckSettings, Runtime, build_parser, configure
from reranker_bench.gpu_check_serving import (
    MeasurePlan,
    SizedRequest,
    SizedRequests,
    cut_to_tokens,
    measure_pipeline,
    run_level,
    sized_requests,
)
from reranker_bench.torch_step_model import (
    read_parameters,
    split_rows,
    trim_padding,
)
from reranker_common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
TINY_MEASURE = (
    "--measure",
    "--skip-export",
    "--lengths",
    "64",
    "--concurrency",
    "2",
    "--latency-requests",
    "2",
    "--saturation-requests",
    "4",
    "--warmup-requests",
    "1",
    "--distinct-requests",
    "2",
    "--candidates",
    "10",
)


def _script(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``bash scripts/gpu-check.sh ARGS`` with this interpreter, no carried wheels, no GPU visible."""
    environment = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    environment.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, cwd=ROOT, timeout=timeout
    )


def _report(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "gpu-check.json").read_text(encoding="utf-8")))


def _settings(*args: str) -> GpuCheckSettings:
    return configure(build_parser().parse_args(list(args)))


# -- command line --------------------------------------------------------------------------------


def test_script_help_lists_the_wrapper_and_the_module_options() -> None:
    done = _script("--help")
    assert done.returncode == EXIT_OK, done.stderr
    assert "Usage: scripts/gpu-check.sh [OUTPUT_DIR] [--dry-run] [OPTIONS]" in done.stdout
    assert "usage: python -m reranker_bench.gpu_check" in done.stdout
    for option in ("--dry-run", "--runtime", "--skip-export", "--lengths", "--measure-budget-s", "OUTPUT_DIR"):
        assert option in done.stdout, option


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    done = _script(str(tmp_path / "out"))
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu-check: error: no CUDA GPU is visible (torch.cuda.is_available() is False); "
        "the GPU check needs one, --dry-run runs its stages on the CPU"
    ]
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_reranker_bench_subcommand_shares_the_check(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import torch

    from reranker_bench.cli import COMMANDS, main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "gpu-check" in COMMANDS
    assert main(["gpu-check", "--lengths", "64"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reranker-bench: error: no CUDA GPU is visible")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "8"], "--lengths must lie in 16..512"),
        (["--lengths", "1024"], "--lengths must lie in 16..512"),
        (["--concurrency", "1,8"], "saturation levels above 1"),
        (["--candidates", "65"], "--candidates must be in 1..64"),
        (["--latency-requests", "0"], "--latency-requests must be positive"),
        (["--measure", "--skip-measure"], "contradict"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, capsys: Any) -> None:
    assert gpu_check.main(["--dry-run", *args]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu-check: error: ") and message in err[0]


def test_unparsable_option_is_a_usage_error(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--lengths", "sixty"])
    assert exit_info.value.code == EXIT_USAGE
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_defaults_per_mode_and_the_results_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OUT", raising=False)
    dry = _settings("--dry-run")
    assert dry.output_dir == Path("gpu-check-results") and dry.plan == DRY_RUN_PLAN
    assert (dry.mode, dry.device, dry.measure, dry.export, dry.onnx_check) == ("dry-run", "cpu", False, True, True)
    assert _settings("--dry-run", "--measure").measure
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "_check_gpu", lambda: None)  # as on the GPU machine
    full = _settings("--lengths", "128,512", "--level-seconds", "3")
    assert full.output_dir == tmp_path and (full.mode, full.device, full.measure, full.onnx_check) == (
        "gpu",
        "cuda",
        True,
        False,
    )
    assert full.plan.lengths == (128, 512) and full.plan.level_seconds == 3
    assert full.plan.concurrency == GPU_PLAN.concurrency == (8, 16) and GPU_PLAN.lengths == (64, 128, 256, 512)
    assert _settings("explicit").output_dir == Path("explicit")


def test_runtime_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from reranker_bench import gpu_check_measure
    from reranker_bench.gpu_check_measure import choose_runtime

    def settings(runtime: Runtime, *, dry_run: bool) -> GpuCheckSettings:
        return GpuCheckSettings(output_dir=tmp_path, dry_run=dry_run, runtime=runtime)

    assert choose_runtime(settings(Runtime.IN_PROCESS, dry_run=False))[0] is Runtime.IN_PROCESS
    assert choose_runtime(settings(Runtime.AUTO, dry_run=True))[0] is Runtime.IN_PROCESS
    monkeypatch.setattr(gpu_check_measure, "triton_unavailable", lambda: "tritonserver not found (no wheel)")
    runtime, reason = choose_runtime(settings(Runtime.AUTO, dry_run=False))
    assert runtime is Runtime.IN_PROCESS and reason == "tritonserver not found (no wheel)"
    with pytest.raises(BenchmarkError, match="cannot run: tritonserver not found"):
        choose_runtime(settings(Runtime.TRITON, dry_run=False))
    monkeypatch.setattr(gpu_check_measure, "triton_unavailable", lambda: None)
    assert choose_runtime(settings(Runtime.AUTO, dry_run=False))[0] is Runtime.TRITON


# -- the dry run, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("dry-run")
    return _script(str(out), "--dry-run"), out


def test_dry_run_runs_every_stage_and_writes_the_report(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = dry_run
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"results: {out / 'gpu-check.json'}, {out / 'gpu-check.md'}" in done.stdout
    report = _report(out)
    assert (report["mode"], report["runtime"], report["problems"]) == ("dry-run", "dry-run", [])
    assert {name: stage["status"] for name, stage in report["stages"].items()} == {
        "hardware": "ok",
        "tokenizer": "ok",
        "model": "ok",
        "fp16_check": "ok",
        "serving": "skipped",
        "export_fp32": "ok",
        "export_fp16": "ok",
        "onnx_check": "ok",
    }
    assert report["hardware"]["gpu"] is None and report["hardware"]["cpu_count"] >= 1
    assert report["hardware"]["torch"] and "torch_cuda" in report["hardware"]
    assert report["model"]["architecture"]["layers"] == 2 and report["model"]["weights"] == "random"
    assert report["modules"]["onnxscript"] and report["modules"]["onnxconverter_common"]
    assert (out / "gpu-check.log").read_text(encoding="utf-8").count("ok (") == 7


def test_dry_run_fp16_figures_are_present_and_sane(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    report = _report(dry_run[1])
    fp16 = report["fp16_check"]
    assert fp16["engine"] == "pytorch (cpu)" and "PyTorch on the CPU" in fp16["note"]
    assert fp16["pairs"] == 7 * 12  # the export's probe set: 7 queries x 12 passages
    assert 0 < fp16["max_abs_diff"] < 1e-2 and fp16["tolerance"] == 5e-2 and fp16["within_tolerance"]
    assert 0 <= fp16["top5_overlap"] <= 1 and -1 <= fp16["kendall_tau"] <= 1
    onnx = report["onnx_check"]
    assert onnx["fp32_vs_pytorch"]["max_abs_diff"] <= 1e-4
    assert 0 < onnx["fp16_vs_fp32"]["max_abs_diff"] < 1e-2 and onnx["fp16_vs_fp32"]["within_tolerance"]
    export = report["export"]
    assert 0 < export["fp16"]["bytes"] < export["fp32"]["bytes"]


def test_dry_run_markdown_has_the_tables(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    report = _report(dry_run[1])
    markdown = (dry_run[1] / "gpu-check.md").read_text(encoding="utf-8")
    assert "- mode: **dry-run**; runtime: **dry-run**" in markdown
    assert "## Hardware" in markdown and "| GPU | none |" in markdown
    fp16 = report["fp16_check"]
    assert f"| pytorch (cpu) | 84 | {fp16['max_abs_diff']:.3g} | 0.05 | yes |" in markdown
    assert "| onnxruntime (CPU) | 84 |" in markdown
    assert "| export_fp16 | ok |" in markdown and "| serving | skipped |" in markdown


# -- the serving stage on the CPU, both pipelines ------------------------------------------------


def _check_levels(report: dict[str, Any], path: str) -> dict[str, Any]:
    serving = report["serving"]
    assert serving["path"] == path and report["runtime"] == "dry-run" and report["problems"] == []
    assert [(level["pair_tokens"], level["concurrency"]) for level in serving["levels"]] == [(64, 1), (64, 2)]
    for level in serving["levels"]:
        assert level["failures"] == 0 and level["requests"] >= 1 and level["bounded_by"] in ("count", "time")
        assert 40 <= level["mean_pair_tokens"] <= 64
        assert level["p50_ms"] > 0 and level["pairs_per_s"] == pytest.approx(level["requests_per_s"] * 10)
    return dict(serving)


def test_dry_run_measures_in_process(tmp_path: Path) -> None:
    done = _script(str(tmp_path), "--dry-run", *TINY_MEASURE, "--runtime", "in-process-fallback")
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    serving = _check_levels(_report(tmp_path), "in-process-fallback")
    assert "PairEncoder" in serving["description"] and serving["reason"].startswith("asked for")
    markdown = (tmp_path / "gpu-check.md").read_text(encoding="utf-8")
    assert "- path: **in-process-fallback**" in markdown and "| c=1 p50 ms | c=1 p95 ms |" in markdown
    assert "| 64 (" in markdown and "| export_fp32 | skipped |" in markdown


def test_dry_run_serves_through_triton_with_the_torch_step(tmp_path: Path) -> None:
    done = _script(str(tmp_path), "--dry-run", *TINY_MEASURE, "--runtime", "triton-ensemble")
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    serving = _check_levels(_report(tmp_path), "triton-ensemble")
    assert "PyTorch FP16 on cpu" in serving["description"]
    assert serving["parity_max_abs_diff"] <= 1e-3  # same FP16 weights, same pair encoding
    assert (tmp_path / "tritonserver.log").is_file()


def test_auto_falls_back_in_process_when_tritonserver_does_not_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reranker_bench import gpu_check_measure
    from reranker_bench.gpu_check_run import run_gpu_check
    from reranker_serve import ServerStartError, TritonServer

    def refuse(self: Any) -> Any:
        raise ServerStartError("failed to load 'reranker_model' version 1: no GPU", log_path=tmp_path / "log")

    # As on the GPU machine: auto picks Triton, whose server then fails to load the model step.
    monkeypatch.setattr(gpu_check_measure, "choose_runtime", lambda settings: (Runtime.TRITON, "importable"))
    monkeypatch.setattr(TritonServer, "start", refuse)
    settings = _settings(str(tmp_path), "--dry-run", *TINY_MEASURE)
    report, code = run_gpu_check(settings, command="test", progress=lambda line: None)
    assert code == EXIT_OK, report["problems"]
    assert report["serving"]["path"] == "in-process-fallback"
    assert report["serving"]["reason"].startswith("tritonserver did not start: failed to load 'reranker_model'")
    assert (
        len(report["serving"]["levels"]) == 2 and _report(tmp_path)["serving"]["levels"] == report["serving"]["levels"]
    )


def test_fp16_figures_keep_the_max_difference_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    from reranker_bench.gpu_check_stages import fp16_figures

    fp32 = np.linspace(-1, 1, 84, dtype=np.float32)
    fp16 = fp32 + np.float32(1e-3)
    full = fp16_figures(fp32, fp16)
    assert full["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3) and full["within_tolerance"]
    assert full["top5_overlap"] == 1.0 and full["kendall_tau"] == pytest.approx(1.0)
    assert not fp16_figures(fp32, fp32 + np.float32(0.1))["within_tolerance"]
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # as where scipy is not installed
    partial = fp16_figures(fp32, fp16)
    assert partial["max_abs_diff"] == full["max_abs_diff"] and partial["within_tolerance"]
    assert partial["kendall_tau"] is None and "not computed" in partial["unavailable"]


# -- pieces --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reranker_bench.models import train_bench_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    train_bench_tokenizer(folder)
    return folder / "tokenizer.json"


def test_sized_requests_fill_pairs_up_to_the_length(tokenizer_json: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    for length in (64, 512):
        sized = sized_requests(tokenizer_json, length, count=3, candidates=5, query_max_length=384)
        assert len(sized.requests) == 3 and all(len(r.documents) == 5 for r in sized.requests)
        for request in sized.requests:
            for document in request.documents:
                pair = tokenizer.encode(request.query, document)  # the template: <s> q </s></s> p </s>
                assert length - 24 <= len(pair.ids) <= length
        assert length - 24 <= sized.mean_pair_tokens <= length
    text = "alpha beta gamma delta epsilon " * 20
    cut = cut_to_tokens(tokenizer, text, 7)
    assert text.startswith(cut) and 0 < len(tokenizer.encode(cut, add_special_tokens=False).ids) <= 7
    assert cut_to_tokens(tokenizer, "short", 50) == "short"


def _sized(pair_tokens: int = 64) -> SizedRequests:
    request = SizedRequest("q", ("a", "b", "c"))
    return SizedRequests(pair_tokens=pair_tokens, requests=(request,), mean_pair_tokens=60.0)


def test_run_level_is_bounded_by_count_and_by_time() -> None:
    calls: list[int] = []

    def make_call() -> Any:
        def call(query: str, documents: Any) -> list[float]:
            calls.append(1)
            return [0.0] * len(documents)

        return call

    level = run_level(make_call, _sized(), concurrency=3, max_requests=10, max_seconds=60)
    assert (level.requests, level.failures, level.bounded_by, len(calls)) == (10, 0, "count", 10)
    assert level.pairs_per_s == pytest.approx(3 * level.requests_per_s)
    stopped = run_level(make_call, _sized(), concurrency=2, max_requests=10, max_seconds=0)
    assert (stopped.requests, stopped.bounded_by, stopped.p50_ms) == (0, "time", 0.0)


def test_run_level_counts_failures_and_keeps_the_first_error() -> None:
    def make_call() -> Any:
        def call(query: str, documents: Any) -> list[float]:
            raise RuntimeError("server gone")

        return call

    level = run_level(make_call, _sized(), concurrency=1, max_requests=3, max_seconds=60)
    assert (level.requests, level.failures, level.requests_per_s) == (3, 3, 0.0)
    assert level.first_error == "RuntimeError: server gone"
    short = run_level(lambda: lambda q, d: [0.0], _sized(), concurrency=1, max_requests=2, max_seconds=60)
    assert short.failures == 2 and short.first_error == "1 scores for 3 documents"


def test_measure_pipeline_runs_every_level_or_skips_past_its_budget() -> None:
    plan = MeasurePlan(
        lengths=(64, 128),
        concurrency=(2, 4),
        latency_requests=2,
        saturation_requests=4,
        level_seconds=60,
        warmup_requests=1,
        budget_s=600,
    )
    sets = {64: _sized(64), 128: _sized(128)}
    lines: list[str] = []
    results, skipped = measure_pipeline(lambda: lambda q, d: [0.0] * len(d), sets, plan, lines.append)
    assert [(r.pair_tokens, r.concurrency, r.requests) for r in results] == [
        (64, 1, 2),
        (64, 2, 4),
        (64, 4, 4),
        (128, 1, 2),
        (128, 2, 4),
        (128, 4, 4),
    ]
    assert skipped == [] and sum("warm-up" in line for line in lines) == 2
    none, skipped = measure_pipeline(
        lambda: lambda q, d: [0.0] * len(d), sets, dataclasses.replace(plan, budget_s=1e-9), lines.append
    )
    assert none == [] and skipped == [
        "64 tokens c=1",
        "64 tokens c=2",
        "64 tokens c=4",
        "128 tokens c=1",
        "128 tokens c=2",
        "128 tokens c=4",
    ]


# -- the PyTorch python-backend step's pure helpers ----------------------------------------------


def test_torch_step_imports_only_what_triton_python_has() -> None:
    source = (ROOT / "src" / "reranker_bench" / "torch_step_model.py").read_text(encoding="utf-8")
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file is rendered alone as model.py"
            modules.add((node.module or "").split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"__future__"}
    # reranker_steps is rendered beside every python step's model.py (the cpu profile's included).
    assert third_party == {"numpy", "torch", "transformers", "reranker_steps"}


def test_torch_step_parameters() -> None:
    def config(**values: str) -> str:
        return json.dumps({"parameters": {k: {"string_value": v} for k, v in values.items()}})

    assert read_parameters(config()) == {
        "model_dir": "hf_model",
        "device": "cuda",
        "dtype": "float16",
        "pad_token_id": "1",
    }
    assert read_parameters(config(device="cpu", dtype="float32", EXECUTION_ENV_PATH="x"))["device"] == "cpu"
    with pytest.raises(ValueError, match="unknown parameters \\['model_file'\\]"):
        read_parameters(config(model_file="model.onnx"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        read_parameters(config(dtype="int8"))
    with pytest.raises(ValueError):
        read_parameters(config(pad_token_id="x"))


def test_torch_step_trims_padding_and_splits_the_logits() -> None:
    feed = {
        "input_ids": np.array([[0, 5, 2, 1, 1, 1], [0, 6, 7, 8, 2, 1], [0, 9, 2, 1, 1, 1]]),
        "attention_mask": np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]),
    }
    trimmed = trim_padding(feed)
    assert trimmed["input_ids"].tolist() == [
        [0, 5, 2, 1, 1],
        [0, 6, 7, 8, 2],
        [0, 9, 2, 1, 1],
    ]  # cut to the longest row
    assert trimmed["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    rows = split_rows(np.array([[0.5], [1.5], [2.5]], dtype=np.float16), [1, 2])
    assert [r.tolist() for r in rows] == [[[0.5]], [[1.5], [2.5]]] and all(r.dtype == np.float32 for r in rows)
    with pytest.raises(ValueError, match="2 logits for 3 rows"):
        split_rows(np.zeros(2), [1, 2])


# -- on a CUDA GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_check_on_a_cuda_gpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
    done = _script(str(tmp_path), *TINY_MEASURE[1:], env=env, timeout=900)
    assert done.returncode in (EXIT_OK, EXIT_FAILURE), done.stderr[-3000:]
    report = _report(tmp_path)
    assert report["mode"] == "gpu" and report["runtime"] in ("triton-ensemble", "in-process-fallback")
    assert report["hardware"]["gpu"]["name"] and report["fp16_check"]["device"] == "cuda"
    assert report["fp16_check"]["within_tolerance"] and report["model"]["architecture"]["vocab_size"] == 250002
