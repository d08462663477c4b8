"""Triton python-backend model ``reranker_model`` for the ``cpu`` profile: onnxruntime on CPU.

Self-contained (copied verbatim to ``<repo>/reranker_model/1/model.py``): the ``nvidia-pytriton``
Triton has no onnxruntime backend, so this model calls onnxruntime itself. Triton's dynamic batcher
hands over several requests at once; their rows are concatenated, scored in length-sorted
sub-batches, then split back per request.

Config parameters (all ``string_value``): ``model_file`` (default ``model.onnx``, in the version
directory; an external-data sidecar next to it is found by onnxruntime), ``intra_op_threads``
(0 = onnxruntime default: one per physical core), ``inter_op_threads`` (default 1),
``graph_optimization_level`` (ORT_DISABLE_ALL | ORT_ENABLE_BASIC | ORT_ENABLE_EXTENDED |
ORT_ENABLE_ALL, default ORT_ENABLE_ALL), ``allow_spinning`` (true | false, default false),
``pad_token_id`` (default 1, XLM-R's; used only when batched requests differ in length),
``sub_batch_rows`` (default 8: rows per onnxruntime run, sorted by length and cut to each run's
longest row; 0 scores the whole batch in one run).

Output ``logits`` FP32 is emitted as [rows, 1] (config ``dims: [ 1 ]``), the same shape the
onnxruntime and TensorRT backends give, so one ensemble config fits every profile.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULTS = {
    "model_file": "model.onnx",
    "intra_op_threads": "0",
    "inter_op_threads": "1",
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "allow_spinning": "false",
    "pad_token_id": "1",
    "sub_batch_rows": "8",
}
OUTPUT_NAME = "logits"


def _error(message: str, invalid_argument: bool) -> Any:
    try:
        code = pb_utils.TritonError.INVALID_ARG if invalid_argument else pb_utils.TritonError.INTERNAL
        error = pb_utils.TritonError(message, code)
    except (AttributeError, TypeError):  # python backends older than 23.09 have no error codes
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        raw = config.get("parameters", {})

        def param(key: str) -> str:
            value = raw.get(key, {}).get("string_value")
            return DEFAULTS[key] if value is None else value.strip()

        options = ort.SessionOptions()
        # Intra-op threads parallelise each matmul over the cores: that is where a transformer's
        # time goes. 0 lets onnxruntime take one thread per physical core.
        options.intra_op_num_threads = int(param("intra_op_threads"))
        # Sequential execution: an encoder graph is one chain of layers with no independent
        # branches worth running in parallel, and inter-op threads would only compete with the
        # intra-op pool (and the tokenizer step) for the same cores.
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = int(param("inter_op_threads"))
        level = param("graph_optimization_level")
        try:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        except AttributeError:
            raise ValueError(f"unknown graph_optimization_level {level!r}") from None
        # Spinning workers burn a core for a while after each run; on a CPU shared with the
        # tokenizer instances that time is better given back.
        spin = "1" if param("allow_spinning").lower() in ("1", "true", "yes") else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)

        path = os.path.join(args["model_repository"], args["model_version"], param("model_file"))
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        configured = {i["name"] for i in config.get("input", [])}
        missing = [name for name in self.input_names if name not in configured]
        if missing:
            raise ValueError(f"the ONNX model needs inputs {missing} that config.pbtxt does not declare")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.onnx_output = OUTPUT_NAME if OUTPUT_NAME in outputs else next(iter(outputs))
        shape = outputs[self.onnx_output]
        if len(shape) > 2 or (len(shape) == 2 and isinstance(shape[1], int) and shape[1] != 1):
            raise ValueError(f"the ONNX output {self.onnx_output!r} must be one logit per row, got shape {shape}")
        self.pad_values = {"input_ids": int(param("pad_token_id"))}
        self.sub_batch_rows = int(param("sub_batch_rows"))  # attention_mask, token_type_ids pad 0

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batch: list[tuple[int, dict[str, np.ndarray]]] = []
        for r, request in enumerate(requests):
            try:
                batch.append((r, self._inputs(request)))
            except ValueError as exc:  # a malformed request is refused alone
                responses[r] = _error(str(exc), invalid_argument=True)
        if not batch:
            return responses
        try:
            results: list[np.ndarray | Exception] = list(self._run([inputs for _, inputs in batch]))
        except Exception as exc:
            if len(batch) == 1:
                results = [exc]
            else:
                # One request's rows can fail the whole run (e.g. ids outside the vocabulary from a
                # direct caller): score each request alone so only that one fails.
                results = []
                for _, inputs in batch:
                    try:
                        results.extend(self._run([inputs]))
                    except Exception as single:
                        results.append(single)
        for (r, _), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                responses[r] = _error(f"reranker_model failed: {type(result).__name__}: {result}", False)
            else:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, result)])
        return responses

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            array = tensor.as_numpy()
            if array.ndim != 2:
                raise ValueError(f"input {name!r} must be [rows, length], got shape {list(array.shape)}")
            arrays[name] = array.astype(np.int64, copy=False)
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1:
            raise ValueError(f"inputs {self.input_names} must share one shape, got {sorted(shapes)}")
        return arrays

    def _run(self, batch: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        # The tokenizer pads to length buckets, so batched requests normally share a length and
        # Triton only merges matching shapes; pad anyway so a mismatch cannot fail the batch.
        width = max(inputs[self.input_names[0]].shape[1] for inputs in batch)
        feed = {}
        for name in self.input_names:
            parts = []
            for inputs in batch:
                a = inputs[name]
                if a.shape[1] < width:
                    a = np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=self.pad_values.get(name, 0))
                parts.append(a)
            feed[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        rows = [inputs[self.input_names[0]].shape[0] for inputs in batch]
        logits = self._score(feed, sum(rows))
        return np.split(logits, np.cumsum(rows)[:-1], axis=0)

    def _score(self, feed: dict[str, np.ndarray], total: int) -> np.ndarray:
        """Logits [total, 1]. Rows are scored shortest first, ``sub_batch_rows`` at a time, each run
        cut to its own longest row: on CPU, padding (up to the bucket and to the longest row of
        the batch) is computed like real tokens, and attention grows with the square of it."""
        mask = feed.get("attention_mask")
        if self.sub_batch_rows <= 0 or mask is None or total <= self.sub_batch_rows:
            (out,) = self.session.run([self.onnx_output], feed)
            return np.asarray(out, dtype=np.float32).reshape(total, 1)
        lengths = mask.sum(axis=1)  # rows are right-padded: the mask's sum is the row's length
        order = np.argsort(lengths, kind="stable")
        logits = np.empty((total, 1), dtype=np.float32)
        for chunk in np.array_split(order, -(-total // self.sub_batch_rows)):
            width = max(int(lengths[chunk].max()), 1)
            (out,) = self.session.run([self.onnx_output], {n: a[chunk, :width] for n, a in feed.items()})
            logits[chunk] = np.asarray(out, dtype=np.float32).reshape(-1, 1)
        return logits

    def finalize(self) -> None:
        self.session = None
