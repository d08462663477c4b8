"""Triton python-backend model ``reranker_tokenizer``: (query, documents) -> padded pair tensors.

A thin adapter: the logic is ``reranker_steps.pairs`` (flag or longest_first pair semantics,
truncation or windowing, bucket padding), rendered beside this file. It imports only ``tokenizers``, ``numpy``,
the standard library and ``triton_python_backend_utils``, so it runs unchanged in NVIDIA's Triton
image with ``tokenizers`` added.

Config parameters (all ``string_value``; see ``reranker_steps.pairs.DEFAULTS``): ``tokenizer_file``,
``max_length``, ``pair_semantics`` (flag | longest_first), ``query_max_length`` (flag only),
``overflow`` (truncate | window), ``window_stride``,
``length_buckets``, ``max_documents``, ``max_rows``, ``max_query_bytes``, ``max_document_bytes``,
``max_request_bytes``, ``model_inputs``, ``pad_token_id``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reranker_steps/ sits beside this file

from reranker_steps.pairs import DEFAULTS, PairEncoder
from reranker_steps.params import StepParameters
from reranker_steps.triton import StepMetrics, answer_each, input_array

STEP = "reranker_tokenizer"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = StepParameters.from_model_config(args["model_config"], DEFAULTS)
        path = os.path.join(args["model_repository"], args["model_version"], params.text("tokenizer_file"))
        self.encoder = PairEncoder.from_file(path, params)
        self.metrics = StepMetrics(STEP)

    def execute(self, requests: list[Any]) -> list[Any]:
        def encode(request: Any) -> dict[str, Any]:
            return self.encoder.encode_request(input_array(request, "query"), input_array(request, "documents"))

        return answer_each(STEP, requests, encode, self.metrics)

    def finalize(self) -> None:
        self.encoder = None
