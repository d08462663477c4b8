"""Triton python-backend ``reranker_model`` step for the GPU check: PyTorch (FP16) on CUDA.

``reranker_bench.gpu_check`` copies this file as ``model.py`` into the ``reranker_model`` step of
a rendered ``cpu``-profile repository, in place of the onnxruntime step, with the model saved by
``save_pretrained`` beside it. Same I/O contract as every ``reranker_model``: inputs
``input_ids`` and ``attention_mask`` INT64 [rows, length] (Triton's dynamic batcher stacks the
requests' rows), output ``logits`` FP32 [rows, 1] (config ``dims: [ 1 ]``).

Self-contained: it imports numpy at module level, torch and transformers when loaded, and
``triton_python_backend_utils`` (only there inside Triton) when it answers, so the pure helpers
below are importable and testable anywhere.

Config parameters (all ``string_value``): ``model_dir`` (default ``hf_model``, in the version
directory), ``device`` (default ``cuda``), ``dtype`` (``float16`` | ``bfloat16`` | ``float32``,
default ``float16``), ``pad_token_id`` (default 1, XLM-R's; pads requests of unequal length).
The instance group stays ``KIND_CPU``: the step places the model on ``device`` itself, so Triton's
own GPU handling (and its CUDA version) never touches the tensors.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
DTYPES = ("float16", "bfloat16", "float32")
DEFAULTS = {"model_dir": "hf_model", "device": "cuda", "dtype": "float16", "pad_token_id": "1"}


class InvalidInput(ValueError):
    """A request whose tensors break the contract (answered INVALID_ARGUMENT)."""


def read_parameters(model_config_json: str) -> dict[str, str]:
    """The step's parameters from Triton's ``model_config`` JSON, defaults filled in, unknown keys refused."""
    raw = json.loads(model_config_json).get("parameters", {})
    unknown = sorted(key for key in raw if key not in DEFAULTS and not key.isupper())
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(DEFAULTS)}")
    values = {key: str(raw.get(key, {}).get("string_value", default)).strip() for key, default in DEFAULTS.items()}
    if values["dtype"] not in DTYPES:
        raise ValueError(f"parameter dtype must be one of {', '.join(DTYPES)}, got {values['dtype']!r}")
    int(values["pad_token_id"])  # raises ValueError for a non-integer
    return values


def check_request(arrays: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """One request's inputs: both present, 2-D, the same shape, as int64."""
    checked = {}
    for name in INPUT_NAMES:
        array = arrays.get(name)
        if array is None:
            raise InvalidInput(f"missing input {name!r}")
        if array.ndim != 2:
            raise InvalidInput(f"input {name!r} must be [rows, length], got shape {list(array.shape)}")
        checked[name] = np.asarray(array, dtype=np.int64)
    if checked["input_ids"].shape != checked["attention_mask"].shape:
        raise InvalidInput(
            f"input_ids {list(checked['input_ids'].shape)} and attention_mask "
            f"{list(checked['attention_mask'].shape)} must have one shape"
        )
    return checked


def merge_requests(
    batch: Sequence[Mapping[str, np.ndarray]], pad_token_id: int
) -> tuple[dict[str, np.ndarray], list[int]]:
    """The requests' rows as one batch, and each request's row count.

    Rows are right-padded to the widest request, then every column past the longest real row
    (the attention mask's last 1) is cut: the tokenizer pads to length buckets, and padding the
    model would only compute and then ignore.
    """
    if not batch:
        raise ValueError("no requests to merge")
    counts = [int(inputs["input_ids"].shape[0]) for inputs in batch]
    width = max(int(inputs["input_ids"].shape[1]) for inputs in batch)
    input_ids = np.full((sum(counts), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((sum(counts), width), dtype=np.int64)
    row = 0
    for inputs, count in zip(batch, counts, strict=True):
        length = inputs["input_ids"].shape[1]
        input_ids[row : row + count, :length] = inputs["input_ids"]
        attention_mask[row : row + count, :length] = inputs["attention_mask"]
        row += count
    used = np.flatnonzero(attention_mask.any(axis=0))
    longest = int(used[-1]) + 1 if used.size else 1
    return {"input_ids": input_ids[:, :longest], "attention_mask": attention_mask[:, :longest]}, counts


def split_rows(logits: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """One FP32 [rows, 1] array per request, in order."""
    flat = np.asarray(logits, dtype=np.float32).reshape(-1)
    if flat.shape[0] != sum(counts):
        raise ValueError(f"{flat.shape[0]} logits for {sum(counts)} rows")
    bounds = np.cumsum([0, *counts])
    return [flat[start:end].reshape(-1, 1) for start, end in itertools.pairwise(bounds)]


def _error(message: str, *, invalid_argument: bool) -> Any:
    import triton_python_backend_utils as pb_utils

    try:
        code = pb_utils.TritonError.INVALID_ARG if invalid_argument else pb_utils.TritonError.INTERNAL
        error = pb_utils.TritonError(message, code)
    except (AttributeError, TypeError):  # python backends older than 23.09 have no error codes
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        params = read_parameters(args["model_config"])
        self.pad_token_id = int(params["pad_token_id"])
        self.device = torch.device(params["device"])
        path = os.path.join(args["model_repository"], args["model_version"], params["model_dir"])
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, params["dtype"]))
        self.model = model.to(self.device).eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        import torch
        import triton_python_backend_utils as pb_utils

        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for position, request in enumerate(requests):
            try:
                arrays = {}
                for name in INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    arrays[name] = None if tensor is None else tensor.as_numpy()
                good.append((position, check_request(arrays)))
            except InvalidInput as exc:
                responses[position] = _error(str(exc), invalid_argument=True)
        if good:
            try:
                feed, counts = merge_requests([inputs for _, inputs in good], self.pad_token_id)
                with torch.inference_mode():
                    tensors = {name: torch.from_numpy(array).to(self.device) for name, array in feed.items()}
                    logits = self.model(**tensors).logits.float().cpu().numpy()
                for (position, _), rows in zip(good, split_rows(logits, counts), strict=True):
                    responses[position] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(OUTPUT_NAME, rows)]
                    )
            except Exception as exc:  # a failed run answers its requests; the model stays up
                for position, _ in good:
                    responses[position] = _error(
                        f"reranker_model failed: {type(exc).__name__}: {exc}", invalid_argument=False
                    )
        return responses

    def finalize(self) -> None:
        self.model = None
