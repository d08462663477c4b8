"""Triton python-backend model ``reranker_tokenizer``: (query, documents) -> padded pair tensors.

A thin adapter: the logic is ``reranker_steps.pairs`` (flag or longest_first pair semantics,
truncation or windowing, bucket padding), rendered beside this file. It imports only ``tokenizers``, ``numpy``,
the standard library and ``triton_python_backend_utils``, so it runs unchanged in NVIDIA's Triton
image with ``tokenizers`` added.

Config parameters (all ``string_value``; see ``reranker_steps.pairs.DEFAULTS``): ``tokenizer_file``,
``max_length``, ``pair_semantics`` (flag | longest_first), ``query_max_length`` (flag only),
``overflow`` (truncate | window), ``window_stride``,
``length_buckets``, ``max_documents``, ``max_rows``, ``max_query_bytes``, ``max_document_bytes``,
``max_request_bytes``, ``model_inputs``, ``pad_token_id``; and ``shed_wait_share`` (default 0: off),
early shedding (``reranker_steps.backlog``): a request is refused before it is tokenized when the
model step's queue would hold it longer than this share of its timeout. With early shedding the
config declares the output ``tokenized_at_ns`` ([rows, 1] INT64), which the model step reads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reranker_steps/ sits beside this file

import numpy as np

from reranker_steps.backlog import TOKENIZED_AT, QueueWait, shed_reason, signal_path
from reranker_steps.pairs import DEFAULTS, PairEncoder
from reranker_steps.params import StepParameters
from reranker_steps.triton import StepMetrics, answer_each, input_array, queue_timeout_us

STEP = "reranker_tokenizer"
SHED_DEFAULTS = {"shed_wait_share": "0"}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = StepParameters.from_model_config(args["model_config"], {**DEFAULTS, **SHED_DEFAULTS})
        path = os.path.join(args["model_repository"], args["model_version"], params.text("tokenizer_file"))
        self.encoder = PairEncoder.from_file(path, params)
        self.metrics = StepMetrics(STEP)
        self.stamp = any(output["name"] == TOKENIZED_AT for output in config.get("output", []))
        self.shed_wait_share = float(params.text("shed_wait_share") or 0)
        self.default_timeout_s = queue_timeout_us(config) / 1e6
        self.queue_wait: QueueWait | None = None
        if self.shed_wait_share > 0:
            try:
                self.queue_wait = QueueWait(signal_path(os.path.dirname(args["model_repository"])))
            except OSError as exc:  # early shedding off; Triton's queue policy still sheds
                print(f"{STEP}: early shedding off, no shared queue-wait file: {exc}", file=sys.stderr)

    def shed(self, request: Any) -> str | None:
        if self.queue_wait is None:
            return None
        timeout_s = (request.timeout() / 1e6) or self.default_timeout_s
        return shed_reason(self.queue_wait.expected_wait_s(), timeout_s, self.shed_wait_share)

    def execute(self, requests: list[Any]) -> list[Any]:
        def encode(request: Any) -> dict[str, Any]:
            outputs = self.encoder.encode_request(input_array(request, "query"), input_array(request, "documents"))
            if self.stamp:
                rows = len(next(iter(outputs.values())))
                outputs[TOKENIZED_AT] = np.full((rows, 1), time.monotonic_ns(), dtype=np.int64)
            return outputs

        return answer_each(STEP, requests, encode, self.metrics, shed=self.shed)

    def finalize(self) -> None:
        self.encoder = None
        if self.queue_wait is not None:
            self.queue_wait.close()
