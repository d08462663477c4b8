"""Benchmark tools (``reranker_bench``): the CLI, pure helpers, and the comparison's plumbing against real servers."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reranker_bench.cli import COMMANDS, build_parser, with_default_command
from reranker_bench.errors import BenchmarkError
from reranker_bench.measure import Comparison, LevelResult, summarize
from reranker_common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from reranker_loadtest.workload import Workload, WorkloadSettings

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[1] / "src"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / "reranker-bench", *args], capture_output=True, text=True, timeout=timeout)


# -- the command line --------------------------------------------------------------------------


def test_cli_help_and_user_errors() -> None:
    for command in ((), *((name,) for name in COMMANDS)):
        done = _run(*command, "--help", timeout=60)
        assert done.returncode == EXIT_OK and "usage:" in done.stdout, command
        help_text = " ".join(done.stdout.split())  # argparse wraps lines
        assert "(default: None)" not in help_text and "(default: )" not in help_text, command
        assert "%%" not in help_text, command
        assert not re.search(r"\(default: [^)]*\) \(default:", help_text), command  # one default per option
    for bad in (["--concurrency", "0"], ["--concurrency", "1,x"], ["serving", "--requests", "0"]):
        done = _run(*bad, timeout=60)
        assert done.returncode == EXIT_USAGE, bad
        assert "reranker-bench" in done.stderr and "error:" in done.stderr and "Traceback" not in done.stderr


def test_reference_server_refuses_a_directory_without_a_model(tmp_path: Path) -> None:
    done = _run("reference-server", "--model", str(tmp_path), timeout=60)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().splitlines() == [
        f"reranker-bench: error: {tmp_path} is not a Hugging Face model directory (no config.json)"
    ]


def test_heal_refuses_a_repository_without_the_ensemble(tmp_path: Path) -> None:
    done = _run("heal", "--repository", str(tmp_path), timeout=60)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().splitlines() == [
        f"reranker-bench: error: {tmp_path} has no 'reranker' ensemble (export a cpu-profile repository)"
    ]


def test_gpu_benchmark_says_so_and_stops_without_a_gpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU mode would run")
    done = _run("--device", "gpu", "--work-dir", str(tmp_path / "w"))
    assert done.returncode == EXIT_FAILURE  # a runtime failure, not a usage error
    assert "CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "w").exists()  # stopped before building anything


def test_client_cost_runs_without_a_server() -> None:
    done = _run("client", "--repeats", "2", "--number", "5")
    # 1 means the cost missed its target on this machine; either way the tables are printed.
    assert done.returncode in (EXIT_OK, EXIT_FAILURE), done.stderr
    assert "| build_request |" in done.stdout and "| decode_and_rank |" in done.stdout
    assert "partial selection / full sort" in done.stdout and "Traceback" not in done.stderr


def test_compare_is_the_default_subcommand() -> None:
    assert with_default_command([]) == ["compare"]
    assert with_default_command(["--device", "gpu"]) == ["compare", "--device", "gpu"]
    assert with_default_command(["serving", "--requests", "3"]) == ["serving", "--requests", "3"]
    assert with_default_command(["--help"]) == ["--help"]
    args = build_parser().parse_args(with_default_command(["--concurrency", "1,4", "--breakdown"]))
    assert args.command == "compare" and args.concurrency == (1, 4) and args.breakdown


def test_the_launcher_command_is_what_the_reference_subcommand_parses(tmp_path: Path) -> None:
    from reranker_bench.reference import ReferenceSettings, Scheduling, server_command

    settings = ReferenceSettings(
        model_dir=tmp_path, device="cuda:0", fp16=True, threads=3, max_length=256, scheduling=Scheduling.THREADPOOL
    )
    command = server_command(settings, host="127.0.0.1", port=1234)
    assert command[:3] == [sys.executable, "-m", "reranker_bench"]
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.model, args.host, args.port) == ("reference-server", tmp_path, "127.0.0.1", 1234)
    assert (args.device, args.fp16, args.threads, args.max_length) == ("cuda:0", True, 3, 256)
    assert args.scheduling == "threadpool"


# -- pure helpers ------------------------------------------------------------------------------


def test_level_summary_and_ratios() -> None:
    result = summarize("triton", 2, [0.1, 0.2, 0.3, 0.4], failures=1, wall_s=2.0, candidates=10, first_error="x")
    assert (result.requests, result.failures, result.first_error) == (4, 1, "x")
    assert result.pairs_per_s == pytest.approx(15.0)  # 3 successful requests x 10 pairs / 2 s
    assert result.p50_ms == pytest.approx(250.0) and result.p50_ms <= result.p95_ms <= result.p99_ms <= 400.0
    assert result.cpu_s_per_request is None
    empty = summarize("reference", 1, [], failures=0, wall_s=0.0, candidates=10)
    assert (empty.requests, empty.pairs_per_s, empty.p95_ms) == (0, 0.0, 0.0)

    def level(pairs_per_s: float, p95_ms: float, cpu_s: float) -> LevelResult:
        return LevelResult(
            system="s",
            concurrency=1,
            requests=2,
            failures=0,
            wall_s=1.0,
            pairs_per_s=pairs_per_s,
            p50_ms=p95_ms,
            p95_ms=p95_ms,
            p99_ms=p95_ms,
            server_cpu_s=cpu_s,
        )

    c = Comparison(concurrency=1, triton=level(30.0, 50.0, 2.0), reference=level(10.0, 200.0, 8.0))
    assert c.throughput_ratio == pytest.approx(3.0)
    assert c.latency_ratio("p95_ms") == pytest.approx(0.25)
    assert c.cpu_ratio == pytest.approx(4.0)


def test_gpu_architecture_is_the_full_size_bge_config() -> None:
    pytest.importorskip("transformers")
    from reranker_bench.models import Architecture
    from reranker_export.testmodels import bge_reranker_v2_m3_config

    config = bge_reranker_v2_m3_config()
    full = Architecture.bge_reranker_v2_m3()
    assert (full.layers, full.hidden, full.heads, full.intermediate) == (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
    )
    assert (full.max_positions, full.vocab_size) == (config.max_position_embeddings, config.vocab_size)
    assert Architecture.cpu_bench().vocab_size is None  # the CPU model takes its tokenizer's size


def test_machine_info_has_the_fields_every_report_reads() -> None:
    from reranker_bench.machine import describe_machine, machine_info

    info = machine_info()
    assert {"platform", "python", "cpu", "cores", "cpus", "memory_gib", "versions"} <= info.keys()
    assert "gpu" not in info and info["cores"] >= 1 and "numpy" in info["versions"]
    assert describe_machine(info).endswith(f"cores, Python {info['python']}")


def test_product_packages_do_not_import_the_benchmarks() -> None:
    for path in SRC.glob("reranker_*/**/*.py"):
        if path.relative_to(SRC).parts[0] == "reranker_bench":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.split(".")[0] == "reranker_bench" for name in names), path


# -- against real servers (the full benchmark is not a test) -----------------------------------


def _served_max_length(url: str) -> int:
    import tritonclient.grpc as triton_grpc

    from reranker_client.config import TOKENIZER_MODEL_NAME

    client = triton_grpc.InferenceServerClient(url)
    try:
        config = client.get_model_config(TOKENIZER_MODEL_NAME).config
    finally:
        client.close()
    return int(config.parameters["max_length"].string_value)


def test_reference_server_and_triton_agree_and_compare(
    triton_server: Any, xlmr_model_dir: Path, tmp_path: Path
) -> None:
    from reranker_bench.compare import BenchReport, BenchSettings, compare
    from reranker_bench.reference import Scheduling, reference_server
    from reranker_bench.reports import format_markdown, format_table, write_report

    settings = BenchSettings(
        concurrency=(1, 2),
        rounds=1,
        min_requests=2,
        warmup_requests=0,
        # Languages the tiny test tokenizer covers: FlagEmbedding on transformers 5 decodes the ids
        # and re-encodes the pair, which changes sequences holding <unk> (see docs/benchmarks.md).
        workload=WorkloadSettings(candidates=8, languages=("en", "de", "fr", "es")),
    )
    with reference_server(
        xlmr_model_dir,
        device="cpu",
        fp16=False,
        threads=1,
        scheduling=Scheduling.SERIAL,
        log_path=tmp_path / "reference.log",
        max_length=_served_max_length(triton_server.grpc_url),
    ) as reference:
        diff, comparisons = compare(
            settings,
            triton_url=triton_server.grpc_url,
            reference_url=reference.url,
            triton_pid=triton_server.pid,
            reference_pid=reference.pid,
        )
    assert diff <= 1e-3
    assert [c.concurrency for c in comparisons] == [1, 2]
    for c in comparisons:
        for r in (c.triton, c.reference):
            assert r.failures == 0 and r.requests == 2, r.first_error
            assert r.pairs_per_s > 0 and 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
            assert r.server_cpu_s is not None and r.server_cpu_s > 0  # the servers did the work
        assert c.throughput_ratio > 0
    report = BenchReport(
        settings={}, machine={"cpu": "test"}, parity_max_abs_diff=diff, comparisons=comparisons, command="x"
    )
    json_path, md_path = write_report(report, tmp_path / "out")
    assert len(json.loads(json_path.read_text())["levels"]) == 2
    assert md_path.read_text().count("| (a) Triton |") == 2
    assert "(b) reference" in format_table(comparisons) and format_markdown(report)


def test_benchmark_refuses_systems_that_disagree(triton_server: Any, tmp_path: Path) -> None:
    from reranker_bench.measure import check_parity, triton_caller

    workload = Workload(WorkloadSettings(candidates=4))
    shifted = triton_caller(triton_server.grpc_url, 60.0)()

    def off_by_one(query: str, documents: Any) -> list[float]:
        return [s + 1.0 for s in shifted(query, documents)]

    with pytest.raises(BenchmarkError, match="disagree"):
        check_parity(workload, shifted, off_by_one, tolerance=1e-3)


# -- the gateway's overhead (reranker-bench gateway) -------------------------------------------------


def _path(path: str, concurrency: int, seconds: float, p50_ms: float) -> Any:
    from reranker_bench.gateway import PathResult

    return PathResult(
        path=path,
        concurrency=concurrency,
        requests=100,
        seconds=seconds,
        p50_ms=p50_ms,
        p95_ms=p50_ms * 2,
        gateway_cpu_ms=None,
    )


def test_gateway_targets_are_judged_per_level() -> None:
    from reranker_bench.gateway import GatewayBenchReport, GatewayBenchSettings, LevelComparison, format_gateway_report

    def report(added_ms: float, gateway_seconds: float) -> GatewayBenchReport:
        levels = (
            LevelComparison(direct=_path("d", 1, 10.0, 20.0), gateway=_path("g", 1, 10.0, 20.0 + added_ms)),
            LevelComparison(direct=_path("d", 16, 10.0, 80.0), gateway=_path("g", 16, gateway_seconds, 80.0)),
        )
        return GatewayBenchReport(command="x", machine={}, settings={}, levels=levels)

    assert report(0.9, 10.4).missed() == []  # +0.9 ms, 3.8% fewer requests/s
    missed = report(1.5, 11.0).missed()  # +1.5 ms at both levels' c=1, 9.1% lost at c=16
    assert len(missed) == 2 and "c=1: +1.50 ms" in missed[0] and "c=16: 9.1% throughput lost" in missed[1]
    assert "targets missed" in format_gateway_report(report(1.5, 11.0))
    with pytest.raises(BenchmarkError, match="at least one request per round"):
        GatewayBenchSettings(requests=2, rounds=4)


def test_gateway_benchmark_runs_against_a_real_server(triton_server: Any, tmp_path: Path) -> None:
    from reranker_bench.gateway import GatewayBenchSettings, run_gateway_benchmark

    settings = GatewayBenchSettings(
        concurrency=(1, 2),
        requests=4,
        rounds=2,
        warmup=1,
        candidates=5,
        document_words="4-8",
        top_n=3,
        triton_url=triton_server.grpc_url,
        work_dir=tmp_path,
    )
    report = run_gateway_benchmark(settings, command="test", progress=lambda _: None)
    assert [level.direct.concurrency for level in report.levels] == [1, 2]
    for level in report.levels:
        assert level.direct.requests == level.gateway.requests == 4
        # Measured (the process's CPU clock ticks in 10 ms steps: four tiny requests may read 0).
        assert level.gateway.gateway_cpu_ms is not None and level.gateway.gateway_cpu_ms >= 0
    assert json.loads(json.dumps(report.to_json()))["levels"][0]["concurrency"] == 1


# -- precision: the cpu profile's graphs side by side -------------------------------------------


def test_precision_bench_runs_every_graph_side_by_side(tmp_path: Path) -> None:
    """The small architecture end to end: graphs built, each run by the step's scorer and through Triton."""
    from reranker_bench.precision import PrecisionBenchSettings, format_precision_report, run_precision_bench

    settings = PrecisionBenchSettings(
        work=tmp_path,
        candidates=8,
        pair_tokens=64,
        repeats=2,
        variants=("fp32", "fused", "int8", "openvino-fp32"),
        concurrency=(2,),
        requests_per_level=2,
    )
    messages: list[str] = []
    report = run_precision_bench(settings, progress=messages.append)
    results = {r["variant"]: r for r in report["results"]}
    assert list(results) == ["fp32", "fused", "int8", "openvino-fp32"]
    assert report["request"]["pairs"] == 8 and 40 <= report["request"]["mean_tokens"] <= 64
    assert results["fused"]["max_abs_diff_vs_fp32"] <= 1e-4  # the same function, other kernels
    assert results["openvino-fp32"]["max_abs_diff_vs_fp32"] <= 1e-4  # f32 hint: no silent bf16
    assert 0 < results["int8"]["max_abs_diff_vs_fp32"] < 0.5
    assert results["int8"]["file_mib"] < 0.5 * results["fp32"]["file_mib"]
    assert all(len(r["step_latency_s"]) == 2 for r in results.values())  # every graph in each round
    # Interleaved: each round times every graph, and the next round starts one graph later.
    rounds = [m.split(": ", 1)[1] for m in messages if "round " in m]
    assert len(rounds) == 4  # two of the model step, two end to end
    step_first, step_second = (r.split(", ") for r in rounds[:2])
    assert len(step_first) == len(step_second) == 4 and step_first[0].split()[0] != step_second[0].split()[0]
    for name in ("fp32", "fused", "int8"):  # served through the ensemble
        assert len(results[name]["end_to_end_latency_s"]) == 2 and set(results[name]["throughput_pairs_per_s"]) == {2}
    assert (
        "end_to_end_latency_s" not in results["openvino-fp32"] or not results["openvino-fp32"]["end_to_end_latency_s"]
    )
    assert set(report["cpu_flags"]) >= {"avx2", "avx512_vnni"}
    table = format_precision_report(report)
    assert table.count("\n| ") == 1 + 4 and "hardware:" in table  # header row, then one row per graph
