"""Triton python-backend ``reranker_model`` step for the GPU check: PyTorch (FP16) on CUDA.

``reranker_bench.gpu_check`` copies this file as ``model.py`` into the ``reranker_model`` step of
a rendered ``cpu``-profile repository, in place of the onnxruntime step, with the model saved by
``save_pretrained`` beside it. Same I/O contract as every ``reranker_model``: inputs
``input_ids`` and ``attention_mask`` INT64 [rows, length] (Triton's dynamic batcher stacks the
requests' rows), output ``logits`` FP32 [rows, 1] (config ``dims: [ 1 ]``).

A thin adapter like the product's steps: request checks, batching, parameters and error answers
come from ``reranker_steps``, which the ``cpu``-profile render already placed beside this file;
torch and transformers are imported when the step loads, so the pure helpers below are importable
and testable anywhere.

Config parameters (all ``string_value``): ``model_dir`` (default ``hf_model``, in the version
directory), ``device`` (default ``cuda``), ``dtype`` (``float16`` | ``bfloat16`` | ``float32``,
default ``float16``), ``pad_token_id`` (default 1, XLM-R's; pads requests of unequal length).
The instance group stays ``KIND_CPU``: the step places the model on ``device`` itself, so Triton's
own GPU handling (and its CUDA version) never touches the tensors.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reranker_steps/ sits beside this file

from reranker_steps.onnx_scoring import check_inputs, concatenate_padded
from reranker_steps.params import StepParameters

STEP = "reranker_model"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
DTYPES = ("float16", "bfloat16", "float32")
DEFAULTS = {"model_dir": "hf_model", "device": "cuda", "dtype": "float16", "pad_token_id": "1"}


def read_parameters(model_config_json: str) -> dict[str, str]:
    """The step's parameters from Triton's ``model_config`` JSON, defaults filled in, unknown keys refused."""
    params = StepParameters.from_model_config(model_config_json, DEFAULTS)
    values = {key: params.text(key) for key in DEFAULTS}
    if values["dtype"] not in DTYPES:
        raise ValueError(f"parameter dtype must be one of {', '.join(DTYPES)}, got {values['dtype']!r}")
    params.integer("pad_token_id", 0)  # raises ValueError for a non-integer
    return values


def trim_padding(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every column past the longest real row cut: the tokenizer pads to length buckets, and padding
    is computed by the model and then ignored."""
    used = np.flatnonzero(feed["attention_mask"].any(axis=0))
    longest = int(used[-1]) + 1 if used.size else 1
    return {name: array[:, :longest] for name, array in feed.items()}


def split_rows(logits: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """One FP32 [rows, 1] array per request, in order."""
    flat = np.asarray(logits, dtype=np.float32).reshape(-1)
    if flat.shape[0] != sum(counts):
        raise ValueError(f"{flat.shape[0]} logits for {sum(counts)} rows")
    bounds = np.cumsum([0, *counts])
    return [flat[start:end].reshape(-1, 1) for start, end in itertools.pairwise(bounds)]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        params = read_parameters(args["model_config"])
        self.pad_values = {"input_ids": int(params["pad_token_id"])}
        self.device = torch.device(params["device"])
        path = os.path.join(args["model_repository"], args["model_version"], params["model_dir"])
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, params["dtype"]))
        self.model = model.to(self.device).eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        import torch

        from reranker_steps.triton import failure_response, input_array, success_response

        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for position, request in enumerate(requests):
            try:  # a malformed request is refused alone
                good.append((position, check_inputs({n: input_array(request, n) for n in INPUT_NAMES}, INPUT_NAMES)))
            except Exception as exc:
                responses[position] = failure_response(STEP, exc)
        if good:
            try:
                feed, counts = concatenate_padded([inputs for _, inputs in good], self.pad_values)
                with torch.inference_mode():
                    tensors = {name: torch.from_numpy(a).to(self.device) for name, a in trim_padding(feed).items()}
                    logits = self.model(**tensors).logits.float().cpu().numpy()
                for (position, _), rows in zip(good, split_rows(logits, counts), strict=True):
                    responses[position] = success_response({OUTPUT_NAME: rows})
            except Exception as exc:  # a failed run answers its requests; the model stays up
                for position, _ in good:
                    responses[position] = failure_response(STEP, exc)
        return responses

    def finalize(self) -> None:
        self.model = None
