"""The export side's exception tree. Every failure a user can cause or fix has a name here.

ExportError
├── ModelLoadError            the model or tokenizer cannot be loaded (offline, unknown id, wrong kind)
├── OnnxExportError           torch -> ONNX conversion failed
│   └── OnnxContractError     a given ONNX file (--onnx) does not fit the ensemble's contract
├── ValidationError           numeric validation failed (never downgraded to a warning)
│   ├── ParityError           ONNX Runtime FP32 logits differ from PyTorch past the tolerance
│   ├── Fp16ToleranceError    the FP16 graph differs from FP32 past the configured tolerance
│   └── Int8AgreementError    the INT8 graph ranks differently from FP32 past the configured bounds
├── TensorRTCompatibilityError  the graph has nodes TensorRT's ONNX parser would refuse (tensorrt profile)
└── RepositoryError           the model repository cannot be rendered (bad settings, missing files)
"""

from __future__ import annotations


class ExportError(Exception):
    """Root of every error raised by ``reranker_export``."""


class ModelLoadError(ExportError):
    """The model or its tokenizer could not be loaded; the message names the fix."""


class OnnxExportError(ExportError):
    """PyTorch could not be converted to ONNX."""


class OnnxContractError(OnnxExportError):
    """An ONNX file brought with ``--onnx`` has inputs or outputs the ensemble cannot feed or read."""


class ValidationError(ExportError):
    """An exported graph failed numeric validation."""


class ParityError(ValidationError):
    """ONNX Runtime and PyTorch disagree (FP32) by more than the tolerance."""


class Fp16ToleranceError(ValidationError):
    """The FP16 graph disagrees with FP32 by more than the configured tolerance."""


class Int8AgreementError(ValidationError):
    """The INT8 graph's rankings agree with FP32's less than the configured top-5 overlap or Kendall tau."""


class TensorRTCompatibilityError(ExportError):
    """The graph for the ``tensorrt`` profile has nodes TensorRT's ONNX parser would refuse."""


class RepositoryError(ExportError):
    """The Triton model repository could not be rendered."""
