"""The gateway's OpenAPI contract, fuzzed with schemathesis against a real Triton: no input yields a 500.

The schema is the checked-in ``docs/openapi.json`` (tests/test_gateway.py keeps it equal to what the
app serves). The run is bounded and derandomized: the same examples every time, so CI stays fast
and a failure reproduces.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from support import ROOT

schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")
EXAMPLES_PER_OPERATION = 40


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_never_get_a_5xx(case: Any, gateway: Any) -> None:
    # Every answer must be a documented status with a body of the documented shape, and never a 5xx
    # the request caused (a 5xx here would be the gateway's fault: Triton is up and healthy).
    case.call_and_validate(
        base_url=gateway.url,
        timeout=60,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        excluded_checks=[ignored_auth],
    )
