"""The string parameters of a step's ``config.pbtxt``, read with defaults and checked once at load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class StepParameters:
    """``parameters { key: "name" value: { string_value: "..." } }`` of one model config.

    A missing key takes its default; a key the step does not know is an error, so a typo in a
    config fails the model's load instead of being ignored. Upper-case keys are the python
    backend's own settings (``EXECUTION_ENV_PATH``, ``FORCE_CPU_ONLY_INPUT_TENSORS``) and pass.
    """

    def __init__(self, raw: Mapping[str, Any], defaults: Mapping[str, str]) -> None:
        unknown = sorted(key for key in set(raw) - set(defaults) if not key.isupper())
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; known: {sorted(defaults)}")
        self._values = {
            key: (default if (value := raw.get(key, {}).get("string_value")) is None else str(value).strip())
            for key, default in defaults.items()
        }

    @classmethod
    def from_model_config(cls, model_config_json: str, defaults: Mapping[str, str]) -> StepParameters:
        """From the ``model_config`` JSON string that Triton passes to ``initialize``."""
        return cls(json.loads(model_config_json).get("parameters", {}), defaults)

    def text(self, key: str) -> str:
        return self._values[key]

    def integer(self, key: str, minimum: int = 1) -> int:
        try:
            value = int(self._values[key])
        except ValueError:
            raise ValueError(f"parameter {key} must be an integer, got {self._values[key]!r}") from None
        if value < minimum:
            raise ValueError(f"parameter {key} must be >= {minimum}, got {value}")
        return value

    def flag(self, key: str) -> bool:
        value = self._values[key].lower()
        if value not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"parameter {key} must be true or false, got {self._values[key]!r}")
        return value in ("1", "true", "yes")

    def integers(self, key: str) -> list[int]:
        """A comma-separated list of integers (empty text: empty list)."""
        text = self._values[key]
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"parameter {key} must be comma-separated integers, got {text!r}") from None
