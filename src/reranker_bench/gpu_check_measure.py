"""The GPU check's serving stage: choose the runtime, build the pipeline, measure it, record it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BenchmarkError
from .gpu_check import GpuCheckSettings, Runtime
from .gpu_check_serving import (
    InProcessScorer,
    SizedRequests,
    libpython_link,
    measure_pipeline,
    pair_encoder,
    prepare_triton_repository,
    sized_requests,
)

if TYPE_CHECKING:
    from reranker_export.settings import ServingSettings

    from .gpu_check_run import Check

PARITY_TOLERANCE = 5e-2
"""Served against in-process scores of one request (same FP16 weights; batch shapes differ)."""


def triton_unavailable() -> str | None:
    """Why the triton-ensemble path cannot run here, or ``None`` when it can be tried."""
    try:
        from reranker_serve import find_triton

        find_triton()
    except Exception as exc:
        return f"tritonserver not found ({exc})"
    try:
        import tritonclient.grpc  # noqa: F401

        import reranker_client  # noqa: F401  (needs tritonclient and grpcio)
    except Exception as exc:
        return f"tritonclient/grpcio not importable ({type(exc).__name__}: {exc})"
    return None


def choose_runtime(settings: GpuCheckSettings) -> tuple[Runtime, str]:
    """(runtime to try, why). ``BenchmarkError`` when triton-ensemble was asked for and cannot run."""
    if settings.runtime is Runtime.IN_PROCESS:
        return Runtime.IN_PROCESS, "asked for (--runtime in-process-fallback)"
    if settings.runtime is Runtime.AUTO and settings.dry_run:
        return Runtime.IN_PROCESS, "dry run (--runtime triton-ensemble serves through Triton on the CPU)"
    missing = triton_unavailable()
    if missing is None:
        return Runtime.TRITON, "nvidia-pytriton and tritonclient are importable"
    if settings.runtime is Runtime.TRITON:
        raise BenchmarkError(f"--runtime triton-ensemble cannot run: {missing}")
    return Runtime.IN_PROCESS, missing


def measure_serving(
    check: Check, *, model: Any, tokenizer_json: Path, serving: ServingSettings, work: Path
) -> dict[str, Any]:
    """Measure one pipeline over the plan; the results go to ``check.report['serving']`` as they come."""
    settings = check.settings
    device = settings.device
    record: dict[str, Any] = check.report.setdefault("serving", {})
    record["plan"] = asdict(settings.plan)
    pad = int(model.config.pad_token_id)
    request_sets: dict[int, SizedRequests] = {}
    for length in settings.plan.lengths:
        request_sets[length] = sized_requests(
            tokenizer_json,
            length,
            count=settings.distinct_requests,
            candidates=settings.candidates,
            query_max_length=serving.tokenizer.effective_query_max_length,
            seed=settings.seed,
        )
        check.say(
            f"  {settings.distinct_requests} requests at <= {length} tokens per pair "
            f"(mean {request_sets[length].mean_pair_tokens:.1f})"
        )
    in_process = InProcessScorer(pair_encoder(tokenizer_json, serving, pad), model, device)
    runtime, reason = choose_runtime(settings)
    if runtime is Runtime.TRITON:
        try:
            return _measure_triton(
                check, record, reason, request_sets, in_process, model, tokenizer_json, serving, work
            )
        except _TritonStartFailed as exc:
            if settings.runtime is Runtime.TRITON:
                raise BenchmarkError(f"tritonserver did not start: {exc}") from exc
            reason = f"tritonserver did not start: {exc}"
            check.say(f"  {reason}; measuring in-process instead")
    _set_runtime(check, record, Runtime.IN_PROCESS, reason)
    record["description"] = (
        f"in one process: reranker_steps.pairs.PairEncoder (the tokenizer step's code, length buckets "
        f"{','.join(map(str, serving.tokenizer.effective_length_buckets))}) then PyTorch FP16 on {device}, "
        f"called from the level's worker threads; no Triton, no gRPC"
    )
    return _measure(check, record, lambda: in_process, request_sets)


class _TritonStartFailed(Exception):
    pass


@contextmanager
def _library_path(folder: Path | None) -> Iterator[None]:
    """``folder`` first on ``LD_LIBRARY_PATH`` while the server starts (its processes inherit it)."""
    if folder is None:
        yield
        return
    previous = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(folder), previous]))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = previous


def _set_runtime(check: Check, record: dict[str, Any], runtime: Runtime, reason: str) -> None:
    record["path"], record["reason"] = runtime.value, reason
    if not check.settings.dry_run:
        check.report["runtime"], check.report["runtime_reason"] = runtime.value, reason
    check.say(f"  serving path: {runtime.value} ({reason})")
    check.write()


def _measure(
    check: Check, record: dict[str, Any], make_call: Any, request_sets: dict[int, SizedRequests]
) -> dict[str, Any]:
    levels, skipped = measure_pipeline(make_call, request_sets, check.settings.plan, check.say)
    record["levels"] = [asdict(level) for level in levels]
    record["skipped_levels"] = skipped
    failures = sum(level.failures for level in levels)
    record["first_error"] = next((level.first_error for level in levels if level.first_error), None)
    if failures:
        check.report["problems"].append(f"{failures} requests failed during the serving stage: {record['first_error']}")
    if skipped:
        check.report["problems"].append(f"serving levels skipped for lack of time: {', '.join(skipped)}")
    return record


def _measure_triton(
    check: Check,
    record: dict[str, Any],
    reason: str,
    request_sets: dict[int, SizedRequests],
    in_process: InProcessScorer,
    model: Any,
    tokenizer_json: Path,
    serving: ServingSettings,
    work: Path,
) -> dict[str, Any]:
    import numpy as np

    from reranker_client import RerankerClient, RetryPolicy
    from reranker_serve import ServeError, TritonServer

    from .gpu_check_run import TRITON_LOG_NAME

    settings = check.settings
    repo = prepare_triton_repository(
        work / "repository", serving=serving, tokenizer_json=tokenizer_json, model=model, device=settings.device
    )
    check.say(f"  rendered the cpu-profile repository with the PyTorch FP16 step in {repo}; starting tritonserver")
    server = TritonServer(
        repo, log_file=settings.output_dir / TRITON_LOG_NAME, startup_timeout_s=settings.startup_timeout_s
    )
    libpython = libpython_link(work / "libpython")
    try:
        with _library_path(libpython):
            server.start()
    except ServeError as exc:
        raise _TritonStartFailed(str(exc).splitlines()[0]) from exc
    try:
        client = RerankerClient(server.grpc_url, timeout=settings.request_timeout_s, retries=RetryPolicy.disabled())
        try:

            def call(query: str, documents: Any) -> list[float]:
                return [float(s) for s in client.score(query, documents)]

            first = request_sets[settings.plan.lengths[0]].requests[0]
            try:
                served = np.asarray(call(first.query, first.documents))
            except Exception as exc:  # a server that loads but cannot answer is no runtime to measure
                raise _TritonStartFailed(f"the first request failed: {type(exc).__name__}: {exc}") from exc
            _set_runtime(check, record, Runtime.TRITON, reason)
            record["description"] = (
                f"tritonserver from nvidia-pytriton, ensemble `reranker`: reranker_tokenizer (python backend, "
                f"HF tokenizers, {serving.tokenizer_instances} CPU instances, length buckets "
                f"{','.join(map(str, serving.tokenizer.effective_length_buckets))}) -> reranker_model (python "
                f"backend, PyTorch FP16 on {settings.device}, dynamic batching up to {serving.max_batch_size} rows, "
                f"max queue delay {serving.max_queue_delay_us} us); client: reranker_client over gRPC, one client "
                "shared by the level's worker threads"
            )
            local = np.asarray(in_process(first.query, first.documents))
            record["parity_max_abs_diff"] = float(np.max(np.abs(served - local)))
            if not record["parity_max_abs_diff"] <= PARITY_TOLERANCE:
                check.report["problems"].append(
                    f"served scores differ from in-process ones by {record['parity_max_abs_diff']:.3g}"
                )
            make_call: Any = lambda: call  # noqa: E731  (one shared client, as its documentation asks)
            return _measure(check, record, make_call, request_sets)
        finally:
            client.close()
    finally:
        server.stop()
