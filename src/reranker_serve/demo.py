"""The README's main job: export a model, serve it with a local Triton, rerank a sample, print the ranking.

    python -m reranker_serve.demo [--model BAAI/bge-reranker-v2-m3 | --model test | --model DIR]

``--model test`` builds the project's tiny trained test model offline, for machines without
access to the Hugging Face hub.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from reranker_export.errors import ExportError, ModelLoadError
from reranker_export.manifest import MANIFEST_FILENAME, read_manifest
from reranker_export.pipeline import ExportSettings, export_model
from reranker_export.settings import DEFAULT_MODEL_ID, Profile, ServingSettings

from .errors import ServeError
from .server import TritonServer

PROG = "reranker-demo"
TEST_MODEL = "test"
SAMPLE_QUERY = "What is the capital of Australia?"
SAMPLE_DOCUMENTS = (
    "Sydney is the largest city in Australia and home to the famous Opera House.",
    "Canberra is the capital city of Australia; it was purpose-built as a compromise between Sydney and Melbourne.",
    "Kangaroos and koalas are marsupials native to Australia.",
    "La capital de Australia es Canberra, situada en el Territorio de la Capital Australiana.",
    "Wellington is the capital of New Zealand.",
    "Die Hauptstadt Österreichs ist Wien.",
)


def _say(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_demo(model: str, workdir: Path, *, rebuild: bool = False) -> int:
    from reranker_client import RerankerClient

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    query, documents = SAMPLE_QUERY, list(SAMPLE_DOCUMENTS)
    if model == TEST_MODEL:
        from reranker_export.testmodels import TestModelKind, build_test_model, relevance_examples

        # The tiny model knows only its own corpus's topics: rank one of its held-out examples.
        example = relevance_examples(count=1)[0]
        query, documents = example.query, list(example.documents)

        model_dir = workdir / "test-model"
        if rebuild or not (model_dir / "config.json").is_file():
            _say(started, "building the tiny test model (offline)")
            build_test_model(model_dir, kind=TestModelKind.XLM_ROBERTA, progress=lambda m: _say(started, m))
        model = str(model_dir)

    repository = workdir / "model_repository"
    reuse = (repository / MANIFEST_FILENAME).is_file() and read_manifest(repository)["model"]["id"] == model
    if reuse and not rebuild:
        _say(started, f"reusing the exported repository {repository} (--rebuild to export again)")
    else:
        export_model(
            ExportSettings(model=model, output=repository, serving=ServingSettings(profile=Profile.CPU), force=True),
            progress=lambda m: _say(started, m),
        )

    _say(started, "starting Triton")
    with TritonServer(repository, log_file=workdir / "tritonserver.log") as server:
        _say(started, f"Triton ready at {server.grpc_url} (log: {server.log_path})")
        with RerankerClient(server.grpc_url) as client:
            results = client.rerank(query, documents, normalize=True, return_documents=True)
    print(f"\nquery: {query}\n")
    print(f"{'rank':>4}  {'score':>7}  document")
    for rank, result in enumerate(results, start=1):
        print(f"{rank:>4}  {result.score:7.4f}  {result.document}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a cross-encoder, serve it with a local Triton (cpu profile) and rerank a sample.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"hub id, local directory, or '{TEST_MODEL}' for the tiny offline test model (default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("artifacts/demo"),
        help="where the model, repository and server log go (default: %(default)s)",
    )
    parser.add_argument("--rebuild", action="store_true", help="export again even if the repository exists")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.model, args.workdir, rebuild=args.rebuild)
    except (ExportError, ServeError) as exc:
        hint = ""
        if isinstance(exc, ModelLoadError) and args.model != TEST_MODEL:
            hint = f" (offline demo: --model {TEST_MODEL}, i.e. MODEL={TEST_MODEL} scripts/quickstart.sh)"
        print(f"{PROG}: error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
