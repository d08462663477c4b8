"""Export the full-size bge-reranker-v2-m3 architecture (random weights) and load it in ONNX Runtime.

Run as a subprocess by tests/test_export.py so its peak memory is measured alone. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import XLMRobertaForSequenceClassification

from reranker_export.onnx_export import export_onnx, external_data_name
from reranker_export.testmodels import bge_reranker_v2_m3_config
from reranker_export.validation import check_parity, onnx_logits, torch_logits


def main(output: Path) -> None:
    started = time.perf_counter()
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(bge_reranker_v2_m3_config()).eval()
    params = sum(p.numel() for p in model.parameters())
    path = export_onnx(model, output / "model.onnx")
    export_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    inputs = {
        "input_ids": rng.integers(5, 250000, size=(2, 24)).astype(np.int64),
        "attention_mask": np.ones((2, 24), dtype=np.int64),
    }
    inputs["attention_mask"][1, 16:] = 0
    report = check_parity(torch_logits(model, inputs), onnx_logits(path, inputs))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "parameters": params,
                "export_seconds": round(export_s, 1),
                "total_seconds": round(time.perf_counter() - started, 1),
                "peak_rss_gib": round(peak_kib / 2**20, 2),
                "graph_bytes": path.stat().st_size,
                "data_file": external_data_name(path),
                "data_bytes": (path.parent / external_data_name(path)).stat().st_size,
                "max_abs_diff": report.max_abs_diff,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
