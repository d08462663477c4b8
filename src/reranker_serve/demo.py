"""The README's main job: export a model, serve it with a local Triton, rerank a sample, print the ranking.

    reranker-demo [--model BAAI/bge-reranker-v2-m3 | --model test | --model DIR]

It needs the export and client packages beside the server: ``pip install "triton-reranker[demo]"``.

``--model test`` builds the project's tiny trained test model offline, for machines without
access to the Hugging Face hub.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from reranker_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, Progress, progress_printer
from reranker_export.errors import ExportError, ModelLoadError
from reranker_export.manifest import MANIFEST_FILENAME, read_manifest
from reranker_export.pipeline import ExportSettings, export_model
from reranker_export.settings import DEFAULT_MODEL_ID, Profile, ServingSettings

from .errors import ServeError
from .server import TritonServer

# What the demo imports beyond the server ([serve]): the export's and the client's libraries.
DEMO_MODULES = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "tritonclient.grpc")


def missing_modules() -> list[str]:
    """The modules the demo needs that this environment lacks (``[demo]`` brings them all)."""
    missing = []
    for name in DEMO_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is absent
            found = False
        if not found:
            missing.append(name)
    return missing


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


def run_demo(model: str, workdir: Path, *, rebuild: bool = False, progress: Progress | None = None) -> None:
    """Export ``model`` (or build the test model) into ``workdir``, serve it, rerank, print the ranking."""
    from reranker_client import RerankerClient

    say = progress or progress_printer()
    workdir.mkdir(parents=True, exist_ok=True)
    query, documents = SAMPLE_QUERY, list(SAMPLE_DOCUMENTS)
    if model == TEST_MODEL:
        from reranker_export.testmodels import TestModelKind, build_test_model, relevance_examples

        # The tiny model knows only its own corpus's topics: rank one of its held-out examples.
        example = relevance_examples(count=1)[0]
        query, documents = example.query, list(example.documents)

        model_dir = workdir / "test-model"
        if rebuild or not (model_dir / "config.json").is_file():
            say("building the tiny test model (offline)")
            build_test_model(model_dir, kind=TestModelKind.XLM_ROBERTA, progress=say)
        model = str(model_dir)

    repository = workdir / "model_repository"
    reuse = (repository / MANIFEST_FILENAME).is_file() and read_manifest(repository)["model"]["id"] == model
    if reuse and not rebuild:
        say(f"reusing the exported repository {repository} (--rebuild to export again)")
    else:
        export_model(
            ExportSettings(model=model, output=repository, serving=ServingSettings(profile=Profile.CPU), force=True),
            progress=say,
        )

    say("starting Triton")
    with TritonServer(repository, log_file=workdir / "tritonserver.log") as server:
        say(f"Triton ready at {server.grpc_url} (log: {server.log_path})")
        with RerankerClient(server.grpc_url) as client:
            results = client.rerank(query, documents, normalize=True, return_documents=True)
    print(f"\nquery: {query}\n")
    print(f"{'rank':>4}  {'score':>7}  document")
    for rank, result in enumerate(results, start=1):
        print(f"{rank:>4}  {result.score:7.4f}  {result.document}")


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
    missing = missing_modules()
    if missing:
        print(
            f"{PROG}: error: the demo also exports and calls the model, and {', '.join(missing)} "
            'cannot be imported here: pip install "triton-reranker[demo]"',
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        run_demo(args.model, args.workdir, rebuild=args.rebuild)
    except (ExportError, ServeError) as exc:
        hint = ""
        if isinstance(exc, ModelLoadError) and args.model != TEST_MODEL:
            hint = f" (offline demo: --model {TEST_MODEL}, i.e. MODEL={TEST_MODEL} scripts/quickstart.sh)"
        print(f"{PROG}: error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
