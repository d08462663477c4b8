"""Triton python-backend model ``reranker_model`` for the ``cpu`` profile: onnxruntime on CPU.

A thin adapter over ``reranker_steps.onnx_scoring``, rendered beside this file: the
``nvidia-pytriton`` Triton has no onnxruntime backend, so this model calls onnxruntime itself.
Triton's dynamic batcher hands over several requests at once; their rows are scored together in
length-sorted sub-batches, then split back per request.

Config parameters (all ``string_value``): ``model_file`` (default ``model.onnx``, in the version
directory; an external-data sidecar next to it is found by onnxruntime), ``intra_op_threads``
(0 = onnxruntime default: one per physical core), ``inter_op_threads`` (default 1),
``graph_optimization_level`` (ORT_DISABLE_ALL | ORT_ENABLE_BASIC | ORT_ENABLE_EXTENDED |
ORT_ENABLE_ALL, default ORT_ENABLE_ALL), ``allow_spinning`` (true | false, default false),
``pad_token_id`` (default 1, XLM-R's; used only when batched requests differ in length),
``sub_batch_rows`` (default 8: rows per onnxruntime run; 0 scores the whole batch in one run).

Output ``logits`` FP32 is emitted as [rows, 1] (config ``dims: [ 1 ]``), the same shape the
onnxruntime and TensorRT backends give, so one ensemble config fits every profile.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reranker_steps/ sits beside this file

from reranker_steps.abandonment import Abandonment
from reranker_steps.errors import Abandoned
from reranker_steps.onnx_scoring import OUTPUT_NAME, OnnxScorer, check_inputs, session_options
from reranker_steps.params import StepParameters
from reranker_steps.triton import StepMetrics, failure_response, input_array, success_response

STEP = "reranker_model"
DEFAULTS = {
    "model_file": "model.onnx",
    "intra_op_threads": "0",
    "inter_op_threads": "1",
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "allow_spinning": "false",
    "pad_token_id": "1",
    "sub_batch_rows": "8",
}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = StepParameters.from_model_config(args["model_config"], DEFAULTS)
        options = session_options(
            intra_op_threads=params.integer("intra_op_threads", 0),
            inter_op_threads=params.integer("inter_op_threads", 0),
            graph_optimization_level=params.text("graph_optimization_level"),
            allow_spinning=params.flag("allow_spinning"),
        )
        self.scorer = OnnxScorer(
            os.path.join(args["model_repository"], args["model_version"], params.text("model_file")),
            options=options,
            declared_inputs=[i["name"] for i in json.loads(args["model_config"]).get("input", [])],
            pad_token_id=params.integer("pad_token_id", 0),
            sub_batch_rows=params.integer("sub_batch_rows", 0),
        )
        self.metrics = StepMetrics(STEP)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batch = []  # (position, inputs) of the well-formed requests, scored together
        for position, request in enumerate(requests):
            try:
                names = self.scorer.input_names
                batch.append((position, check_inputs({n: input_array(request, n) for n in names}, names)))
            except Exception as exc:  # a malformed request is refused alone
                responses[position] = failure_response(STEP, exc)
        # Rows of a request nobody waits for any more (cancelled, past its timeout) are not computed.
        abandonment = Abandonment([requests[position] for position, _ in batch])
        scored, skipped = self.scorer.rows_scored, self.scorer.rows_skipped
        results = self.scorer.score_requests([i for _, i in batch], abandoned=abandonment.reason) if batch else []
        self.metrics.add("rows_scored", self.scorer.rows_scored - scored)
        self.metrics.add("rows_skipped", self.scorer.rows_skipped - skipped)
        for (position, _), result in zip(batch, results, strict=True):
            if isinstance(result, Abandoned):
                self.metrics.abandoned(str(result))
            if isinstance(result, Exception):
                responses[position] = failure_response(STEP, result)
            else:
                responses[position] = success_response({OUTPUT_NAME: result})
        return responses

    def finalize(self) -> None:
        self.scorer = None
