"""The full-size bge-reranker-v2-m3 architecture (random weights) through the real export pipeline.

``export_model`` end to end for the ``tensorrt`` profile, as the default production profile ships
it: ONNX export with external data, FP32 parity, FP16 conversion of a graph over 2 GiB, its
validation, the TensorRT operator check, the repository copy and the manifest's hashes of the
sidecar. Run as a subprocess by tests/test_export.py so its peak memory is measured alone; prints
progress on stderr and one JSON line of figures on stdout.

    python tests/scripts/export_full_size.py WORKDIR
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, XLMRobertaForSequenceClassification

from reranker_common import progress_printer
from reranker_export.pipeline import ExportSettings, export_model
from reranker_export.settings import Profile, ServingSettings, TokenizerSettings
from reranker_export.testmodels import TestModelKind, bge_reranker_v2_m3_config, build_test_model

# Short pairs keep the three validation passes (PyTorch, ONNX Runtime FP32 and FP16 on two CPU
# cores) to minutes; the graph, its size and every pipeline step are the full-size ones.
MAX_LENGTH = 64


def main(workdir: Path) -> None:
    say = progress_printer()
    started = time.perf_counter()
    # The tiny test model's tokenizer (ids < 4000) in front of the full-size architecture.
    tokenizer_dir = build_test_model(workdir / "tokenizer-source", kind=TestModelKind.XLM_ROBERTA, train_steps=0)
    model_dir = workdir / "full-size"
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(bge_reranker_v2_m3_config()).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model_dir)
    del model
    say(f"saved the full-size model ({params / 1e6:.1f}M parameters)")

    serving = ServingSettings(
        profile=Profile.TENSORRT,
        tokenizer=TokenizerSettings(max_length=MAX_LENGTH, length_buckets=(MAX_LENGTH,), max_documents=64),
        max_batch_size=64,
    )
    exported = time.perf_counter()
    result = export_model(ExportSettings(model=str(model_dir), output=workdir / "repo", serving=serving), progress=say)
    export_s = time.perf_counter() - exported
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    onnx_dir = result.repository / "reranker_model" / "onnx"
    print(
        json.dumps(
            {
                "parameters": params,
                "export_model_seconds": round(export_s, 1),
                "total_seconds": round(time.perf_counter() - started, 1),
                "peak_rss_gib": round(peak_kib / 2**20, 2),
                "repository": str(result.repository),
                "onnx_files": {p.name: p.stat().st_size for p in sorted(onnx_dir.iterdir())},
                "validation": result.manifest["validation"],
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
