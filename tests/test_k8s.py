"""Kubernetes manifests (``k8s/``): they render, match the API schemas, pass the security scan,
and agree with what the export writes and the local server runs.

Tools: ``kubectl`` (for ``kubectl kustomize``; or a standalone ``kustomize``) and ``checkov``
(its own virtualenv, ``.venv-checkov``, or ``$CHECKOV``). Tests that need one skip with the
install command when it is absent. The flags, probes and metric names are checked against a
real ``tritonserver`` (the one bundled in ``nvidia-pytriton``); the engine-build init script
runs for real with stand-ins for ``nvidia-smi`` and ``trtexec``, which need a GPU.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from reranker_client import RerankerClient
from reranker_export.repository import VERSION, ModelSignature, parse_config, render_repository
from reranker_export.settings import (
    CORE_MODEL_NAME,
    ENSEMBLE_NAME,
    TOKENIZER_MODEL_NAME,
    Profile,
    ServingSettings,
)
from reranker_export.tensorrt import ENGINE_FILENAME, engine_build_command
from reranker_loadtest.slo import SloSettings
from reranker_serve import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    SERVER_FLAGS,
    ServerStartError,
    TritonServer,
)
from support import lock_pins

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu-tensorrt", "gpu-onnxruntime", "cpu")
GPU_OVERLAYS = ("gpu-tensorrt", "gpu-onnxruntime")
KUSTOMIZATIONS = {**{name: K8S / "overlays" / name for name in OVERLAYS}, "loadtest": K8S / "loadtest"}
NAMESPACE = "reranker"
SERVER_DOCKERFILE = K8S / "server" / "Dockerfile"
LOADTEST_DOCKERFILE = K8S / "loadtest" / "Dockerfile"
GATEWAY_DOCKERFILE = K8S / "gateway" / "Dockerfile"
GATEWAY_CONTAINER = "gateway"
GATEWAY_PORT = 8080
ENGINE_INIT_CONTAINER = "build-engine"
TRITON_CONTAINER = "triton"
REPOSITORY_VOLUME = "model-repository"
GRPC_MAX_AGE_FLAG = "--grpc-max-connection-age"
GRPC_MAX_AGE_GRACE_FLAG = "--grpc-max-connection-age-grace"
# The default Deployment progress deadline, and what a pod's start may take besides its
# startup probe: a GPU node from the cluster autoscaler and the image pulls (Triton ~15 GB,
# TensorRT ~10 GB); for gpu-tensorrt, the XLM-R-large engine build on top.
DEFAULT_PROGRESS_DEADLINE_S = 600
NODE_AND_PULL_ALLOWANCE_S = 15 * 60
ENGINE_BUILD_ALLOWANCE_S = 30 * 60
# ReadWriteMany storage classes of the managed clouds (their default classes cannot provide it).
RWX_STORAGE_CLASSES = {"EKS": "efs-sc", "GKE": "standard-rwx", "AKS": "azurefile-csi"}
# The oldest Kubernetes the manifests target, and the newest release kubernetes-validate knows.
MIN_KUBERNETES = "1.29.0"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.latest_version())
# Flags the local launcher (reranker_serve.TritonServer) sets itself.
LAUNCHER_FLAGS = {
    "--model-repository",
    "--backend-directory",
    "--http-port",
    "--grpc-port",
    "--metrics-port",
    "--http-address",
    "--grpc-address",
    "--metrics-address",
}

KUBECTL_HINT = (
    "kubectl (>= 1.27, with kustomize v5) is not installed: install it from the Kubernetes apt "
    "repository (apt-get install -y kubectl), or set KUBECTL=/path/to/kubectl or KUSTOMIZE=/path/to/kustomize"
)
CHECKOV_HINT = (
    "checkov is not installed: python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov "
    "(or set CHECKOV=/path/to/checkov)"
)


# -- rendering ------------------------------------------------------------------------------


@functools.cache
def _kustomize_command() -> tuple[str, ...] | None:
    if os.environ.get("KUSTOMIZE"):
        return (os.environ["KUSTOMIZE"], "build")
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl:
        return (kubectl, "kustomize")
    kustomize = shutil.which("kustomize")
    return (kustomize, "build") if kustomize else None


@functools.cache
def _render(directory: Path) -> str:
    command = _kustomize_command()
    if command is None:
        pytest.skip(KUBECTL_HINT)
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} {directory} failed:\n{result.stderr}"
    return result.stdout


def rendered(name: str) -> list[dict[str, Any]]:
    """The objects of one kustomization, freshly parsed (callers may mutate them)."""
    return [doc for doc in yaml.safe_load_all(_render(KUSTOMIZATIONS[name])) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    matches = [c for c in pod_spec(workload).get(key, []) if c["name"] == name]
    assert len(matches) == 1, f"no {key[:-1]} {name} in {workload['metadata']['name']}"
    return matches[0]


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """``--name=value`` arguments grouped by name (a flag may repeat)."""
    values: dict[str, list[str]] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        values.setdefault(name, []).append(value)
    return values


def flag(args: list[str], name: str) -> str:
    values = flag_values(args).get(name, [])
    assert len(values) == 1, f"expected {name} once in {args}"
    return values[0]


def deployment(overlay: str) -> dict[str, Any]:
    return find(rendered(overlay), "Deployment", "reranker")


def triton(overlay: str) -> dict[str, Any]:
    return container(deployment(overlay), TRITON_CONTAINER)


def mount_path(spec_container: dict[str, Any], volume: str) -> str:
    paths = [m["mountPath"] for m in spec_container.get("volumeMounts", []) if m["name"] == volume]
    assert len(paths) == 1, f"{spec_container['name']} mounts {volume} {len(paths)} times"
    return paths[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def duration_s(value: str) -> float:
    """A Prometheus duration such as ``10m`` in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"unsupported duration {value}"
    return sum(int(n) * units[u] for n, u in parts)


def repository_in_volume(spec_container: dict[str, Any]) -> PurePosixPath:
    """Where Triton's --model-repository lies inside the model-repository volume."""
    repository = PurePosixPath(flag(spec_container["args"], "--model-repository"))
    return repository.relative_to(mount_path(spec_container, REPOSITORY_VOLUME))


def expand_kubelet_vars(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command arguments."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


# -- rendering and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_renders(name: str) -> None:
    objects = rendered(name)
    assert objects, f"{name} rendered nothing"
    seen = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{name}: {key} rendered twice"
        seen.add(key)
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{name}: {key} is not in {NAMESPACE}"
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "triton-reranker", f"{name}: {key} unlabelled"


# Prometheus Operator CRDs: kubernetes-validate ships only the built-in kinds, and the
# operator's CRD files are not vendored here, so these objects are checked against strict
# schemas of the fields this project uses (unknown fields rejected, types and formats
# checked) and, further down, against the Services and metrics they refer to.
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP},
    "additionalProperties": False,
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "properties": {"matchLabels": _STRING_MAP},
                        "additionalProperties": False,
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                        "properties": {
                                            "record": {
                                                "type": "string",
                                                "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$",
                                            },
                                            "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def validate_object(obj: dict[str, Any], version: str) -> None:
    """Strict schema validation: Kubernetes' own schemas, or the CRD subsets above."""
    crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd_schema is not None:
        jsonschema.Draft202012Validator(crd_schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_objects_match_the_kubernetes_schemas(name: str, version: str) -> None:
    errors = []
    for obj in rendered(name):
        try:
            validate_object(obj, version)
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
        except jsonschema.ValidationError as error:
            path = "/".join(str(p) for p in error.absolute_path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")
    assert not errors, f"{name} against Kubernetes {version}:\n" + "\n".join(errors)


def test_schema_validation_rejects_misspelt_fields() -> None:
    """The validators above reject what the API server would (guards against a check that passes anything)."""
    objects = rendered("gpu-tensorrt")
    broken = deployment("gpu-tensorrt")
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate_object(broken, MIN_KUBERNETES)
    monitor = find(objects, "ServiceMonitor")
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    with pytest.raises(jsonschema.ValidationError):
        validate_object(monitor, MIN_KUBERNETES)
    rule = find(objects, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(rule, MIN_KUBERNETES)


# -- security scan ------------------------------------------------------------------------------


def _checkov() -> str:
    candidates = [
        os.environ.get("CHECKOV"),
        str(ROOT / ".venv-checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(CHECKOV_HINT)


def _run_checkov(*args: str) -> list[dict[str, Any]]:
    command = [_checkov(), "--config-file", str(K8S / ".checkov.yaml"), "--output", "json", *args]
    # No API key and --skip-download (config): checkov runs offline on its bundled checks.
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov gave no JSON report (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return reports if isinstance(reports, list) else [reports]


def _failed_checks(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]


def test_checkov_passes_on_the_rendered_manifests(tmp_path: Path) -> None:
    for name, directory in KUSTOMIZATIONS.items():
        (tmp_path / f"{name}.yaml").write_text(_render(directory), encoding="utf-8")
    reports = _run_checkov("--directory", str(tmp_path), "--framework", "kubernetes")
    assert [r["check_type"] for r in reports] == ["kubernetes"]
    summary = reports[0]["summary"]
    objects = sum(len(rendered(name)) for name in KUSTOMIZATIONS)
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= objects, "checkov did not scan every rendered object"
    assert summary["passed"] > 0
    assert not _failed_checks(reports), "checkov failed checks:\n" + "\n".join(_failed_checks(reports))


def test_checkov_passes_on_the_dockerfiles() -> None:
    files = [
        arg for path in (SERVER_DOCKERFILE, LOADTEST_DOCKERFILE, GATEWAY_DOCKERFILE) for arg in ("--file", str(path))
    ]
    reports = _run_checkov(*files, "--framework", "dockerfile")
    assert [r["check_type"] for r in reports] == ["dockerfile"]
    assert reports[0]["summary"]["passed"] > 0
    assert not _failed_checks(reports), "checkov failed checks:\n" + "\n".join(_failed_checks(reports))


def test_every_skipped_check_is_justified() -> None:
    config_text = (K8S / ".checkov.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(config_text)
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert set(config["framework"]) == {"kubernetes", "dockerfile"}
    for check_id in config.get("skip-check", []):
        # A comment in the config names the check and says why; the README repeats it.
        assert re.search(rf"^\s*#.*\b{check_id}\b.+", config_text, re.M), f"{check_id}: no justification comment"
        assert re.search(rf"\b{check_id}\b.+", readme), f"{check_id} is skipped but not documented in k8s/README.md"


# -- agreement with the local server and the export ----------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_runs_with_the_flags_of_the_local_server(overlay: str) -> None:
    spec = triton(overlay)
    assert spec["command"] == ["tritonserver"]
    args = spec["args"]
    missing = [f for f in SERVER_FLAGS if f not in args]
    assert not missing, f"{overlay}: flags of reranker_serve.SERVER_FLAGS missing: {missing}"
    assert repository_in_volume(spec).parts, f"{overlay}: Triton reads the volume root"
    assert int(flag(args, "--http-port")) == DEFAULT_HTTP_PORT
    assert int(flag(args, "--grpc-port")) == DEFAULT_GRPC_PORT
    assert int(flag(args, "--metrics-port")) == DEFAULT_METRICS_PORT
    assert flag(args, "--allow-metrics") == "true"
    restricted = {
        name: {group.split(":", 1)[0] for group in values}
        for name, values in flag_values(args).items()
        if name in ("--http-restricted-api", "--grpc-restricted-protocol")
    }
    for name in ("--http-restricted-api", "--grpc-restricted-protocol"):
        apis = set().union(*(g.split(",") for g in restricted[name]))
        assert {"model-repository", "shared-memory"} <= apis, f"{name} leaves {apis} open"
    assert "summary_latencies=true" in flag_values(args)["--metrics-config"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_is_a_directory_inside_the_volume(overlay: str) -> None:
    """The volume root of an ext4-backed claim holds lost+found, which Triton would load as a
    model (see test_stray_lost_found_stops_a_server_at_the_volume_root)."""
    spec = triton(overlay)
    inside = repository_in_volume(spec)
    assert inside.parts and ".." not in inside.parts, f"{overlay}: --model-repository is not below the mount"
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == REPOSITORY_VOLUME]
    assert "subPath" not in mount, "one way to pick the directory: the flag"
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert f"--output ./{inside}" in readme and f":/mnt/{inside}" in readme, "README copies elsewhere"
    assert f"--model-repository={flag(spec['args'], '--model-repository')}" in readme


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_connections_are_recycled_for_new_pods(overlay: str) -> None:
    """Clients re-resolve the headless Service only when a connection closes: Triton closes
    each one at a maximum age, so pods the HPA adds get traffic from connected clients."""
    args = triton(overlay)["args"]
    age, grace = flag(args, GRPC_MAX_AGE_FLAG), flag(args, GRPC_MAX_AGE_GRACE_FLAG)
    # Milliseconds, as plain integers: Triton reads "120s" as 120 ms without complaint.
    assert re.fullmatch(r"[1-9][0-9]*", age) and re.fullmatch(r"[1-9][0-9]*", grace), (age, grace)
    # A call sent just before the GOAWAY may take its whole client deadline.
    client_deadline_s = inspect.signature(RerankerClient).parameters["timeout"].default
    assert int(grace) >= client_deadline_s * 1000
    # A new pod gets its share (age + gRPC's 10% jitter + the grace) before the p95 alert fires.
    alert = next(
        r
        for g in find(rendered("gpu-tensorrt"), "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "RerankerLatencyP95AboveSLO"
    )
    assert (int(age) * 1.1 + int(grace)) / 1000 < duration_s(alert["for"])


def _startup_window_s(spec_container: dict[str, Any]) -> int:
    probe = spec_container["startupProbe"]
    return int(probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollout_deadline_outlasts_a_pod_start(overlay: str) -> None:
    """Past progressDeadlineSeconds a rollout is marked failed: it must cover a new node, the
    image pulls, the startup probe's window and, for gpu-tensorrt, the engine build."""
    workload = deployment(overlay)
    deadline = workload["spec"]["progressDeadlineSeconds"]
    needed = _startup_window_s(triton(overlay)) + NODE_AND_PULL_ALLOWANCE_S
    if any(c["name"] == ENGINE_INIT_CONTAINER for c in pod_spec(workload).get("initContainers", [])):
        # engine-init.sh sets no time limit on the build, so the allowance stands for it.
        needed += ENGINE_BUILD_ALLOWANCE_S
        assert overlay == "gpu-tensorrt"
    assert deadline > DEFAULT_PROGRESS_DEADLINE_S and deadline >= needed, (deadline, needed)
    # The README's rollout command waits at least as long as the controller.
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    (timeout,) = re.findall(r"rollout status deployment/reranker --timeout=(\w+)", readme)
    assert duration_s(timeout) >= deadline


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_services_and_probes_agree(overlay: str) -> None:
    objects = rendered(overlay)
    workload = deployment(overlay)
    spec = triton(overlay)
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
    assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels)

    grpc = find(objects, "Service", "reranker-grpc")
    assert grpc["spec"]["clusterIP"] == "None", "the gRPC Service must be headless (client-side balancing)"
    assert [(p["name"], p["port"], p["targetPort"]) for p in grpc["spec"]["ports"]] == [
        ("grpc", DEFAULT_GRPC_PORT, "grpc")
    ]
    http = find(objects, "Service", "reranker")
    assert http["spec"]["type"] == "ClusterIP" and http["spec"].get("clusterIP") != "None"
    assert {(p["name"], p["port"], p["targetPort"]) for p in http["spec"]["ports"]} == {
        ("http", DEFAULT_HTTP_PORT, "http"),
        ("rerank", GATEWAY_PORT, "rerank"),
        ("metrics", DEFAULT_METRICS_PORT, "metrics"),
    }
    for service in (grpc, http):
        assert selects(service["spec"]["selector"], pod_labels)

    startup = spec["startupProbe"]["httpGet"]
    assert startup["port"] == "http" and startup["path"] == "/v2/health/ready"
    for kind in ("readinessProbe", "livenessProbe"):
        command = spec[kind]["exec"]["command"]
        # The deep health check, on this container's own gRPC port.
        assert command[:2] == ["reranker-client", "health"] and "--canary" in command
        assert flag(command, "--url") == f"127.0.0.1:{ports['grpc']}"
        assert float(flag(command, "--timeout")) < spec[kind]["timeoutSeconds"]

    policy = find(objects, "NetworkPolicy", "reranker")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == set(ports) | {"rerank"}, "every container port is reachable, by its own rule"
    budget = find(objects, "PodDisruptionBudget")
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_sidecar_calls_triton_on_localhost(overlay: str) -> None:
    from reranker_gateway.cli import build_parser

    workload = deployment(overlay)
    gateway = container(workload, GATEWAY_CONTAINER)
    args = build_parser().parse_args(gateway["args"])  # the image's command line parses
    assert args.triton == f"localhost:{DEFAULT_GRPC_PORT}" and args.host == "0.0.0.0" and args.port == GATEWAY_PORT
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {"rerank": GATEWAY_PORT}
    # Ready only when a canary rerank goes through the whole ensemble; alive while the loop answers.
    ready, live = gateway["readinessProbe"], gateway["livenessProbe"]
    assert ready["httpGet"] == {"path": "/health", "port": "rerank"}
    assert live["httpGet"] == {"path": "/livez", "port": "rerank"}
    assert args.health_timeout < ready["timeoutSeconds"], "the canary must end before the probe gives up"
    assert "nvidia.com/gpu" not in gateway["resources"]["limits"]
    grace = pod_spec(workload)["terminationGracePeriodSeconds"]
    assert gateway["lifecycle"]["preStop"] == triton(overlay)["lifecycle"]["preStop"] and grace > 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_outlasts_the_drain(overlay: str) -> None:
    spec = triton(overlay)
    exit_timeout = int(flag(spec["args"], "--exit-timeout-secs"))
    pre_stop = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod_spec(deployment(overlay))["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + exit_timeout


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_pods_are_locked_down(name: str) -> None:
    workloads = [o for o in rendered(name) if o["kind"] in ("Deployment", "Job")]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for spec_container in all_containers(workload):
            context = spec_container["securityContext"]
            where = f"{workload['metadata']['name']}/{spec_container['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            resources = spec_container["resources"]
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[section]), f"{where}: {section}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_scheduling_and_shared_memory(overlay: str) -> None:
    workload = deployment(overlay)
    spec = pod_spec(workload)
    gpu_containers = [c["name"] for c in all_containers(workload) if "nvidia.com/gpu" in c["resources"]["limits"]]
    if overlay in GPU_OVERLAYS:
        expected = [TRITON_CONTAINER] + ([ENGINE_INIT_CONTAINER] if overlay == "gpu-tensorrt" else [])
        assert sorted(gpu_containers) == sorted(expected)
        for spec_container in all_containers(workload):
            if spec_container["name"] in gpu_containers:
                assert spec_container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    else:
        assert not gpu_containers and "nodeSelector" not in spec and "tolerations" not in spec
        assert "--allow-gpu-metrics=false" in triton(overlay)["args"]
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert mount_path(triton(overlay), "dshm") == "/dev/shm"


# -- storage ------------------------------------------------------------------------------------


def _read_write_many_claim_files() -> dict[Path, dict[str, Any]]:
    claims = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "PersistentVolumeClaim" and "ReadWriteMany" in doc["spec"]["accessModes"]:
                claims[path] = doc
    return claims


def test_shared_claims_say_which_storage_class_provides_read_write_many() -> None:
    """EKS, GKE and AKS default classes are block storage: a ReadWriteMany claim on them stays
    Pending. Each claim file carries a commented storageClassName per cloud that, uncommented,
    makes a valid claim; the README says the same and how uid 10001 gets write access."""
    claims = _read_write_many_claim_files()
    rendered_claims = {
        c["metadata"]["name"]
        for overlay in OVERLAYS
        for c in kinds(rendered(overlay), "PersistentVolumeClaim")
        if "ReadWriteMany" in c["spec"]["accessModes"]
    }
    assert rendered_claims == {c["metadata"]["name"] for c in claims.values()}
    assert rendered_claims == {"reranker-model-repository", "reranker-engine-cache"}
    for path, claim in claims.items():
        text = path.read_text(encoding="utf-8")
        assert "storageClassName" not in claim["spec"], f"{path}: the class is the user's choice"
        assert "fsGroupPolicy" in text and "README" in text, f"{path}: no permission guidance"
        for cloud, storage_class in RWX_STORAGE_CLASSES.items():
            pattern = rf"^(\s*)# (storageClassName: {re.escape(storage_class)})\b.*\b{cloud}\b.*$"
            line = re.search(pattern, text, re.M)
            assert line, f"{path}: no commented storageClassName for {cloud}"
            uncommented = yaml.safe_load(text.replace(line[0], line[1] + line[2]))
            assert uncommented["spec"]["storageClassName"] == storage_class
            kubernetes_validate.validate(uncommented, MIN_KUBERNETES, strict=True)

    readme = (K8S / "README.md").read_text(encoding="utf-8")
    storage = readme.split("### Storage", 1)[1].split("\n## ", 1)[0]
    for storage_class in RWX_STORAGE_CLASSES.values():
        assert f"`{storage_class}`" in storage
    assert "ReadWriteMany" in storage and "fsGroupPolicy" in storage
    # The permission steps name the pod's user and group.
    for overlay in OVERLAYS:
        context = pod_spec(deployment(overlay))["securityContext"]
        user, group = context["runAsUser"], context["runAsGroup"]
        assert context["fsGroup"] == group
        assert f"chown {user}:{group}" in storage or f'"chown","{user}:{group}"' in storage
        assert f'uid: "{user}", gid: "{group}"' in storage, "the EFS class's access-point owner"


# -- engine build (gpu-tensorrt) --------------------------------------------------------------


def test_engine_volumes_fit_the_repository_layout() -> None:
    objects = rendered("gpu-tensorrt")
    workload = deployment("gpu-tensorrt")
    init = container(workload, ENGINE_INIT_CONTAINER, init=True)
    server = triton("gpu-tensorrt")
    env = {e["name"]: e["value"] for e in init["env"]}
    assert init["image"] == f"nvcr.io/nvidia/tensorrt:{triton_release()}-py3"
    assert env["CORE_MODEL"] == CORE_MODEL_NAME
    assert env["MODEL_REPOSITORY"] == flag(server["args"], "--model-repository")
    assert mount_path(init, REPOSITORY_VOLUME) == mount_path(server, REPOSITORY_VOLUME)
    assert env["ENGINE_CACHE"] == mount_path(init, "engine-cache")
    assert env["ENGINE_LINK_DIR"] == mount_path(init, "engine")
    # Triton sees the link where it loads the engine, and its target at the same path.
    assert mount_path(server, "engine") == f"{flag(server['args'], '--model-repository')}/{CORE_MODEL_NAME}/{VERSION}"
    assert mount_path(server, "engine-cache") == env["ENGINE_CACHE"]
    assert all(m.get("readOnly") for m in server["volumeMounts"] if m["name"] != "dshm" and m["name"] != "tmp")

    # The init container runs the script of the generated ConfigMap, which is engine-init.sh.
    script_dir = mount_path(init, "engine-init")
    assert init["command"] == ["sh", f"{script_dir}/engine-init.sh"]
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "engine-init")
    config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
    source = (K8S / "components" / "tensorrt-engine" / "engine-init.sh").read_text(encoding="utf-8")
    assert config_map["data"] == {"engine-init.sh": source}

    # Triton loads <model>/1/model.plan: the name the export's config and build script use.
    config = parse_config((ROOT / "model_repository" / CORE_MODEL_NAME / "config.pbtxt").read_text("utf-8"))
    assert config.platform == "tensorrt_plan"
    assert config.default_model_filename in ("", ENGINE_FILENAME)
    assert (ROOT / "model_repository" / CORE_MODEL_NAME / "build_engine.sh").is_file()


def _write_stub(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}", encoding="utf-8")
    path.chmod(0o755)


# nvidia-smi and trtexec need a GPU: stand-ins that answer like them. trtexec records its
# arguments and writes an "engine" derived from the ONNX bytes to --saveEngine.
_NVIDIA_SMI = """
assert "--query-gpu=name,compute_cap" in sys.argv, sys.argv
print(os.environ.get("STUB_GPU", "NVIDIA H100 80GB HBM3, 9.0"))
"""
_TRTEXEC = """
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # trtexec --help")
    sys.exit(0)
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
with open(args["--onnx"], "rb") as onnx, open(args["--saveEngine"], "wb") as engine:
    engine.write(b"engine of " + onnx.read())
    if os.environ.get("STUB_FAIL"):
        sys.exit(1)
"""


class EngineInitPod:
    """The init container's filesystem and environment, mapped onto a temporary directory."""

    def __init__(self, root: Path) -> None:
        workload = deployment("gpu-tensorrt")
        self.spec = container(workload, ENGINE_INIT_CONTAINER, init=True)
        self.volumes = {m["mountPath"]: root / "volumes" / m["name"] for m in self.spec["volumeMounts"]}
        for directory in self.volumes.values():
            directory.mkdir(parents=True, exist_ok=True)
        # The script as the generated ConfigMap delivers it.
        script_volume = self.volume_dir("engine-init")
        config_map_name = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "engine-init")
        config_map = find(rendered("gpu-tensorrt"), "ConfigMap", config_map_name["configMap"]["name"])
        for key, text in config_map["data"].items():
            (script_volume / key).write_text(text, encoding="utf-8")
        self.bin = root / "bin"
        self.bin.mkdir()
        _write_stub(self.bin / "nvidia-smi", _NVIDIA_SMI)
        _write_stub(self.bin / "trtexec", _TRTEXEC)
        # An image without TensorRT's Python bindings: the version comes from trtexec's banner.
        _write_stub(self.bin / "python3", "sys.exit(1)\n")
        self.log = root / "trtexec.log"
        self.log.touch()

    def volume_dir(self, name: str) -> Path:
        return self.volumes[mount_path(self.spec, name)]

    def local(self, pod_path: str) -> str:
        for mount, directory in self.volumes.items():
            if pod_path == mount or pod_path.startswith(mount + "/"):
                return str(directory) + pod_path[len(mount) :]
        return pod_path

    @property
    def repository(self) -> Path:
        """The model repository (MODEL_REPOSITORY, a directory inside the claim)."""
        env = {e["name"]: e["value"] for e in self.spec["env"]}
        path = Path(self.local(env["MODEL_REPOSITORY"]))
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def model_dir(self) -> Path:
        return self.repository / CORE_MODEL_NAME

    @property
    def link(self) -> Path:
        return self.volume_dir("engine") / ENGINE_FILENAME

    def builds(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run(self, **extra_env: str) -> subprocess.CompletedProcess[str]:
        env = {e["name"]: self.local(e["value"]) for e in self.spec["env"]}
        env.update(PATH=f"{self.bin}:/usr/bin:/bin", STUB_LOG=str(self.log), HOSTNAME="reranker-0", **extra_env)
        command = [self.local(part) for part in self.spec["command"]]
        return subprocess.run(
            command,
            env=env,
            cwd=self.local(self.spec["workingDir"]),
            capture_output=True,
            text=True,
            check=False,
        )


def _render_tensorrt_repository(directory: Path, settings: ServingSettings) -> None:
    render_repository(directory, settings)
    (directory / CORE_MODEL_NAME / "onnx").mkdir()
    (directory / CORE_MODEL_NAME / "onnx" / "model.onnx").write_bytes(b"onnx graph v1")


def test_engine_init_builds_once_per_gpu_tensorrt_and_model(tmp_path: Path) -> None:
    pod = EngineInitPod(tmp_path)
    settings = ServingSettings(profile=Profile.TENSORRT)
    _render_tensorrt_repository(pod.repository, settings)
    cache = pod.volume_dir("engine-cache")

    first = pod.run()
    assert first.returncode == 0, first.stderr
    (build,) = pod.builds()
    engine = Path(os.readlink(pod.link))
    assert engine.parent.parent == cache / "NVIDIA-H100-80GB-HBM3-sm9.0" / "trt-100800"
    assert re.fullmatch(r"[0-9a-f]{16}", engine.parent.name)
    assert engine.name == ENGINE_FILENAME and engine.read_bytes() == b"engine of onnx graph v1"
    # trtexec ran exactly the export's command, writing under a private name first.
    save_engine = next(a for a in build if a.startswith("--saveEngine=")).split("=", 1)[1]
    assert save_engine.startswith(f"{engine}.partial.reranker-0.")
    onnx_path = pod.model_dir / "onnx" / "model.onnx"
    expected = engine_build_command(settings, ModelSignature(), onnx_path=str(onnx_path), engine_path=save_engine)
    assert ["trtexec", *build] == expected
    assert sorted(p.name for p in engine.parent.iterdir()) == [ENGINE_FILENAME]

    # A new pod (fresh link volume) on the same GPU model reuses the engine.
    pod.link.unlink()
    again = pod.run()
    assert again.returncode == 0, again.stderr
    assert len(pod.builds()) == 1 and "reusing" in again.stderr
    assert Path(os.readlink(pod.link)) == engine

    # A re-exported model and another GPU model each get their own engine.
    onnx_path.write_bytes(b"onnx graph v2")
    assert pod.run().returncode == 0
    rebuilt = Path(os.readlink(pod.link))
    assert rebuilt.parent != engine.parent and rebuilt.read_bytes() == b"engine of onnx graph v2"
    assert pod.run(STUB_GPU="NVIDIA L4, 8.9").returncode == 0
    other_gpu = Path(os.readlink(pod.link))
    assert other_gpu.parent.parent.parent.name == "NVIDIA-L4-sm8.9"
    assert len(pod.builds()) == 3
    assert engine.is_file() and rebuilt.is_file(), "older engines stay cached"


def test_engine_init_fails_loudly_and_leaves_no_partial_engine(tmp_path: Path) -> None:
    pod = EngineInitPod(tmp_path)
    repository = pod.repository
    # A repository of another profile: no build script.
    render_repository(repository, ServingSettings(profile=Profile.ONNXRUNTIME))
    missing = pod.run()
    assert missing.returncode != 0
    assert "reranker-export --profile tensorrt" in missing.stderr

    shutil.rmtree(repository)
    repository.mkdir()
    _render_tensorrt_repository(repository, ServingSettings(profile=Profile.TENSORRT))
    failed = pod.run(STUB_FAIL="1")
    assert failed.returncode != 0 and "engine build failed" in failed.stderr
    assert len(pod.builds()) == 1
    leftovers = [p for p in pod.volume_dir("engine-cache").rglob("*") if p.is_file()]
    assert leftovers == [], "a failed build must leave nothing a later pod could mistake for an engine"
    assert not pod.link.exists() and not pod.link.is_symlink()


# -- images -----------------------------------------------------------------------------------


def _dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(encoding="utf-8"), re.M))


def triton_release() -> str:
    return _dockerfile_args(SERVER_DOCKERFILE)["TRITON_RELEASE"]


def test_images_are_pinned_to_one_release_and_install_from_the_lock() -> None:
    text = SERVER_DOCKERFILE.read_text(encoding="utf-8")
    assert re.fullmatch(r"\d{2}\.\d{2}", triton_release())
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_RELEASE\}-py3$", text, re.M)
    # The server image's packages come from requirements/lock.txt: no model baked in, and no
    # version written twice; the project itself only for the probes' reranker-client.
    assert re.findall(r"^COPY (\S+)", text, re.M) == ["requirements/lock.txt", "pyproject.toml", "src"]
    assert "PIP_CONSTRAINT=/tmp/reranker/requirements/lock.txt" in text, "the server image installs within the lock"
    install = re.search(r"pip install --no-cache-dir \\\n\s+([^\n]+?) \\\n", text)
    assert install
    locked = lock_pins()
    packages = install.group(1).split()
    assert set(packages) == {"tokenizers", "onnxruntime", "numpy", '"/tmp/reranker[client]"'}
    assert {"tokenizers", "onnxruntime", "numpy"} <= set(locked)
    assert "==" not in text and "ARG TOKENIZERS" not in text
    server_ignore = (K8S / "server" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {"*", "!requirements/lock.txt", "!pyproject.toml", "!README.md", "!src/"} <= set(server_ignore)

    loadtest = LOADTEST_DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'^RUN PIP_CONSTRAINT=requirements/lock\.txt pip install [^\n]*"\.\[loadtest\]"$', loadtest, re.M)
    assert re.search(r"^COPY requirements/lock\.txt \./requirements/lock\.txt$", loadtest, re.M)
    # The base image's Python is the lock's.
    assert re.search(r"^FROM python:3\.11\.\d+-slim", loadtest, re.M)
    gateway = GATEWAY_DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'^RUN PIP_CONSTRAINT=requirements/lock\.txt pip install [^\n]*"\.\[gateway\]"$', gateway, re.M)
    assert re.search(r"^COPY requirements/lock\.txt \./requirements/lock\.txt$", gateway, re.M)
    assert re.search(r"^COPY src \./src$", gateway, re.M)
    assert re.search(r"^FROM python:3\.11\.\d+-slim", gateway, re.M)
    gateway_ignore = (K8S / "gateway" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {"!src/", "!pyproject.toml", "!README.md", "!requirements/lock.txt"} <= set(gateway_ignore)
    for dockerfile in (SERVER_DOCKERFILE, LOADTEST_DOCKERFILE, GATEWAY_DOCKERFILE):
        for image in re.findall(r"^FROM (\S+)", dockerfile.read_text(encoding="utf-8"), re.M):
            assert image == "base" or re.search(r":[\w${}.-]+$", image), f"{dockerfile}: unpinned {image}"
    for name in KUSTOMIZATIONS:
        for workload in (o for o in rendered(name) if o["kind"] in ("Deployment", "Job")):
            for spec_container in all_containers(workload):
                image = spec_container["image"]
                assert re.search(r":[\w.-]+$|@sha256:", image) and not image.endswith(":latest"), image


def test_loadtest_image_installs_every_package() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["package-dir"] == {"": "src"}
    text = LOADTEST_DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^COPY src \./src$", text, re.M), "pip install . needs every package under src/"
    ignore = (K8S / "loadtest" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {"!src/", "!pyproject.toml", "!README.md", "!requirements/lock.txt"} <= set(ignore)
    assert re.search(r"^COPY src/reranker_loadtest/locustfile\.py /opt/reranker/locustfile\.py$", text, re.M)


# -- load test ----------------------------------------------------------------------------------


def test_locust_runs_the_project_locustfile_against_the_grpc_service() -> None:
    objects = rendered("loadtest")
    master = find(objects, "Job", "reranker-locust-master")
    worker = find(objects, "Job", "reranker-locust-worker")
    master_args = container(master, "locust")["args"]
    worker_args = container(worker, "locust")["args"]
    for args in (master_args, worker_args):
        assert flag(args, "--locustfile") == "/opt/reranker/locustfile.py"
    assert "--master" in master_args and "--headless" in master_args and "--worker" in worker_args

    server = rendered("gpu-tensorrt")
    grpc = find(server, "Service", "reranker-grpc")
    assert flag(master_args, "--host") == f"{grpc['metadata']['name']}:{grpc['spec']['ports'][0]['port']}"
    # The SLO gate: the project's defaults and the latency alert use the same bound.
    slo = SloSettings()
    assert float(flag(master_args, "--slo-p95-ms")) == slo.p95_ms == 200
    assert float(flag(master_args, "--slo-max-failure-ratio")) == slo.max_failure_ratio
    alert = next(
        r
        for g in find(server, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "RerankerLatencyP95AboveSLO"
    )
    assert float(alert["expr"].rsplit(">", 1)[1]) * 1000 == slo.p95_ms

    # Workers find the master, match --expect-workers and may reach the server.
    service = find(objects, "Service", "reranker-locust-master")
    assert flag(worker_args, "--master-host") == service["metadata"]["name"]
    assert int(flag(worker_args, "--master-port")) == service["spec"]["ports"][0]["port"]
    assert int(flag(master_args, "--master-bind-port")) == service["spec"]["ports"][0]["port"]
    assert int(flag(master_args, "--expect-workers")) == worker["spec"]["parallelism"]
    assert selects(service["spec"]["selector"], master["spec"]["template"]["metadata"]["labels"])
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    client_rule = find(server, "NetworkPolicy", "reranker")["spec"]["ingress"][0]["from"][0]
    assert selects(client_rule["podSelector"]["matchLabels"], worker_labels)
    master_policy = find(objects, "NetworkPolicy", "reranker-locust-master")
    assert selects(master_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"], worker_labels)
    assert master["spec"]["backoffLimit"] == 0, "a failed SLO gate must fail the Job, not rerun it"


# Parses each Job's arguments with Locust's own parser, the locustfile's options included
# (registered when the locustfile is imported), in a separate process: importing Locust
# monkey-patches the standard library for gevent.
_PARSE_LOCUST_ARGS = """
import json, runpy, sys
from locust import argument_parser
runpy.run_path(sys.argv[1])
parser = argument_parser.get_parser(default_config_files=[])
for args in json.loads(sys.argv[2]):
    options = vars(parser.parse_args(args))
    plain = (str, int, float, bool, type(None))
    print(json.dumps({k: v for k, v in options.items() if isinstance(v, plain)}))
"""


def test_locust_parses_the_jobs_arguments(tmp_path: Path) -> None:
    objects = rendered("loadtest")
    master = container(find(objects, "Job", "reranker-locust-master"), "locust")
    worker = container(find(objects, "Job", "reranker-locust-worker"), "locust")
    assert master["command"] == worker["command"] == ["locust"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PARSE_LOCUST_ARGS,
            str(ROOT / "src" / "reranker_loadtest" / "locustfile.py"),
            json.dumps([master["args"], worker["args"]]),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"Locust rejects the Job arguments:\n{result.stderr[-3000:]}"
    master_options, worker_options = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert master_options["master"] and master_options["headless"] and not master_options["worker"]
    assert worker_options["worker"] and not worker_options["master"]
    assert master_options["slo_p95_ms"] == SloSettings().p95_ms
    assert master_options["slo_max_failure_ratio"] == SloSettings().max_failure_ratio
    assert master_options["expect_workers"] >= 1 and master_options["run_time"]


# -- autoscaling and monitoring -----------------------------------------------------------------


ADAPTER_VALUES = K8S / "components" / "autoscaling" / "prometheus-adapter-values.yaml"
DASHBOARD = K8S / "components" / "monitoring" / "grafana-dashboard.json"


def _adapter_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))["rules"]["custom"]
    return rules


def _queries() -> dict[str, str]:
    """Every PromQL expression shipped: alerts, the adapter rule, the dashboard."""
    queries: dict[str, str] = {}
    for group in find(rendered("gpu-tensorrt"), "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            queries[f"rule {rule.get('record') or rule.get('alert')}"] = rule["expr"]
    for i, rule in enumerate(_adapter_rules()):
        queries[f"adapter {i} series"] = rule["seriesQuery"]
        queries[f"adapter {i} query"] = (
            rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="ns"').replace("<<.GroupBy>>", "pod")
        )
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queries[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries[f"variable {variable['name']}"] = variable["query"]["query"]
    return queries


def _balanced(expr: str) -> bool:
    stack: list[str] = []
    pairs = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "({[":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def test_shedding_has_its_alert() -> None:
    """Requests the steps' queues refuse (Triton's REJECTED) have a ratio and an alert."""
    rules = {
        rule.get("record") or rule.get("alert"): rule
        for group in find(rendered("gpu-tensorrt"), "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    }
    ratio = rules["reranker:request_shed_ratio:rate5m"]["expr"]
    assert 'reason="REJECTED"' in ratio
    for step in ("reranker_tokenizer", "reranker_model"):
        assert step in ratio
    alert = rules["RerankerShedding"]
    assert alert["expr"].startswith("reranker:request_shed_ratio:rate5m >")
    assert "OverloadedError" in alert["annotations"]["description"]


def test_hpa_scales_on_the_adapter_metric() -> None:
    (rule,) = _adapter_rules()
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    for overlay in GPU_OVERLAYS:
        objects = rendered(overlay)
        hpa = find(objects, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "reranker",
        }
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
        assert "replicas" not in deployment(overlay)["spec"], "the HPA owns the replica count"
        budget = find(objects, "PodDisruptionBudget")
        assert budget["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert not kinds(rendered("cpu"), "HorizontalPodAutoscaler")


def test_service_monitor_scrapes_the_metrics_port() -> None:
    for overlay in GPU_OVERLAYS:
        objects = rendered(overlay)
        monitor = find(objects, "ServiceMonitor")
        selected = [
            s
            for s in kinds(objects, "Service")
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert [s["metadata"]["name"] for s in selected] == ["reranker"]
        endpoints = monitor["spec"]["endpoints"]
        assert {e["port"] for e in endpoints} <= {p["name"] for p in selected[0]["spec"]["ports"]}
        # Triton's metrics port, and the gateway's /metrics on its API port.
        assert sorted((e["port"], e["path"]) for e in endpoints) == [("metrics", "/metrics"), ("rerank", "/metrics")]
    dashboards = [
        c for c in kinds(rendered("gpu-tensorrt"), "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    (dashboard,) = dashboards
    assert json.loads(dashboard["data"]["reranker.json"]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_prometheus_selects_the_service_monitor_and_the_rules(overlay: str) -> None:
    """kube-prometheus-stack loads ServiceMonitors and PrometheusRules only with its `release`
    label: both carry the same one, from one transformer scoped to the two kinds."""
    objects = rendered(overlay)
    monitor, rule = find(objects, "ServiceMonitor"), find(objects, "PrometheusRule")
    release = monitor["metadata"]["labels"].get("release")
    assert release, "the ServiceMonitor has no release label"
    assert rule["metadata"]["labels"].get("release") == release, "the PrometheusRule would never load"
    labelled = sorted(o["kind"] for o in objects if "release" in o["metadata"].get("labels", {}))
    assert labelled == ["PrometheusRule", "ServiceMonitor"]
    source = K8S / "components" / "monitoring" / "prometheus-release-label.yaml"
    transformer = yaml.safe_load(source.read_text(encoding="utf-8"))
    assert transformer["labels"] == {"release": release}
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert f"`release: {release}`" in readme and "components/monitoring/prometheus-release-label.yaml" in readme


def test_queries_name_models_of_the_repository() -> None:
    queries = _queries()
    repository_models = {p.name for p in (ROOT / "model_repository").iterdir() if (p / "config.pbtxt").is_file()}
    assert {ENSEMBLE_NAME, TOKENIZER_MODEL_NAME, CORE_MODEL_NAME} <= repository_models
    recorded = {
        rule["record"]
        for group in find(rendered("gpu-tensorrt"), "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for where, expr in queries.items():
        assert _balanced(expr), f"{where}: unbalanced brackets in {expr}"
        for operator, value in re.findall(r'\bmodel\s*(=~|=)\s*"([^"]*)"', expr):
            names = value.split("|") if operator == "=~" else [value]
            assert set(names) <= repository_models, f"{where}: unknown model in {expr}"
        for name in re.findall(r"\breranker:[a-z0-9_:]+", expr):
            assert name in recorded, f"{where}: {name} is not a recorded rule"


# -- against a real Triton ------------------------------------------------------------------------

_IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        outputs = [pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", o)]) for o in outputs]
"""


def _stand_in_repository(root: Path) -> Path:
    """The ensemble's three models as identity python models: the same model names (hence
    the same metric series) as the real repository, without tokenizer or ONNX."""
    io = (
        'input [{ name: "IN" data_type: TYPE_FP32 dims: [-1] }]\n'
        'output [{ name: "OUT" data_type: TYPE_FP32 dims: [-1] }]'
    )
    for name in (TOKENIZER_MODEL_NAME, CORE_MODEL_NAME):
        (root / name / VERSION).mkdir(parents=True)
        (root / name / VERSION / "model.py").write_text(_IDENTITY_MODEL, encoding="utf-8")
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{io}\n'
            "instance_group [{ count: 1 kind: KIND_CPU }]\n",
            encoding="utf-8",
        )
    (root / ENSEMBLE_NAME / VERSION).mkdir(parents=True)
    steps = (
        f'{{ model_name: "{TOKENIZER_MODEL_NAME}" model_version: -1 input_map {{ key: "IN" value: "IN" }} '
        'output_map { key: "OUT" value: "mid" } }, '
        f'{{ model_name: "{CORE_MODEL_NAME}" model_version: -1 input_map {{ key: "IN" value: "mid" }} '
        'output_map { key: "OUT" value: "OUT" } }'
    )
    (root / ENSEMBLE_NAME / "config.pbtxt").write_text(
        f'name: "{ENSEMBLE_NAME}"\nplatform: "ensemble"\nmax_batch_size: 0\n{io}\n'
        f"ensemble_scheduling {{ step [ {steps} ] }}\n",
        encoding="utf-8",
    )
    return root


def _deployed_args(admin_key: str) -> list[str]:
    """The cpu overlay's Triton flags as the kubelet expands them, less those the launcher sets."""
    spec = triton("cpu")
    env = {e["name"]: e.get("value", "") for e in spec["env"]}
    key_source = next(e for e in spec["env"] if e["name"] == "TRITON_ADMIN_KEY")
    assert key_source["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    env["TRITON_ADMIN_KEY"] = admin_key
    return [
        expand_kubelet_vars(arg, env)
        for arg in spec["args"]
        if arg not in SERVER_FLAGS and arg.split("=", 1)[0] not in LAUNCHER_FLAGS
    ]


@pytest.fixture(scope="module")
def deployed_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model-repository claim as an ext4-backed volume leaves it: lost+found (empty) at its
    root, and the stand-in repository where the Deployment points --model-repository."""
    volume = tmp_path_factory.mktemp("model-repository-volume")
    (volume / "lost+found").mkdir()
    _stand_in_repository(volume / repository_in_volume(triton("cpu")))
    return volume


@pytest.fixture(scope="module")
def deployed_triton(deployed_volume: Path) -> Iterator[tuple[TritonServer, str]]:
    """A local tritonserver started with the cpu overlay's flags on the volume above."""
    admin_key = str(uuid.uuid4())  # the pod UID the Deployment passes as TRITON_ADMIN_KEY
    repository = deployed_volume / repository_in_volume(triton("cpu"))
    with TritonServer(repository, extra_args=_deployed_args(admin_key)) as server:
        yield server, admin_key


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_stray_lost_found_stops_a_server_at_the_volume_root(
    deployed_triton: tuple[TritonServer, str], deployed_volume: Path
) -> None:
    """With the Deployment's flags (--exit-on-error), an empty lost+found beside the repository
    stops a server reading the volume root; the Deployment's subdirectory serves."""
    server, key = deployed_triton
    assert server.is_ready() and server.model_repository.parent == deployed_volume
    at_root = TritonServer(deployed_volume, extra_args=_deployed_args(key))
    try:
        with pytest.raises(ServerStartError, match=r"lost\+found"):
            at_root.start()
    finally:
        at_root.stop()


def test_triton_closes_grpc_connections_at_their_max_age(
    deployed_triton: tuple[TritonServer, str], deployed_volume: Path
) -> None:
    """Triton takes the Deployment's connection-age flags (the fixture's server started with
    them) and acts on them: with the age shortened, it closes an open gRPC connection, which
    is what makes a round_robin client re-resolve the headless Service."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server, key = deployed_triton
    deployed = _deployed_args(key)
    for name in (GRPC_MAX_AGE_FLAG, GRPC_MAX_AGE_GRACE_FLAG):
        assert f"{name}={flag(deployed, name)}" in server.command
    shortened = {GRPC_MAX_AGE_FLAG: "200", GRPC_MAX_AGE_GRACE_FLAG: "100"}
    args = [f"{n}={shortened[n]}" if (n := a.split("=", 1)[0]) in shortened else a for a in deployed]
    with TritonServer(server.model_repository, extra_args=args) as short_lived:
        states: list[grpc.ChannelConnectivity] = []
        closed = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
                closed.set()  # the server ended the connection (GOAWAY): READY -> IDLE

        channel = grpc.insecure_channel(short_lived.grpc_url)
        try:
            channel.subscribe(watch, try_to_connect=True)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=30).live
            # An upper bound against a hang only: the close comes after ~0.2 s.
            assert closed.wait(timeout=120), f"the connection stayed open: {states}"
        finally:
            channel.close()


def test_probes_pass_on_a_healthy_triton(deployed_triton: tuple[TritonServer, str], triton_server: Any) -> None:
    """Each probe, as the kubelet runs it: the startup probe against a server started with the
    Deployment's flags, the canary probes against a server of the real ensemble. (That the
    canary fails on a server whose stub died: tests/test_health.py.)"""
    deployed, _ = deployed_triton
    spec = triton("cpu")
    status, _ = _http(deployed.http_url + spec["startupProbe"]["httpGet"]["path"])
    assert status == 200
    server = triton_server
    for probe in ("readinessProbe", "livenessProbe"):
        command = list(spec[probe]["exec"]["command"])
        command[0] = str(Path(sys.executable).with_name(command[0]))  # this venv's reranker-client
        command = [f"--url={server.grpc_url}" if arg.startswith("--url=") else arg for arg in command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=spec[probe]["timeoutSeconds"] * 4)
        assert done.returncode == 0, (probe, done.stdout, done.stderr)


def test_a_zombie_is_restarted_within_30_seconds() -> None:
    """Worst case: the stub dies just after a passing probe; each later probe fails within its
    timeout; the kubelet restarts the container after ``failureThreshold`` failures."""
    for overlay in OVERLAYS:
        liveness = triton(overlay)["livenessProbe"]
        worst = liveness["periodSeconds"] * liveness["failureThreshold"] + liveness["timeoutSeconds"]
        assert worst <= 30, (overlay, worst)
        readiness = triton(overlay)["readinessProbe"]
        assert readiness["periodSeconds"] * readiness["failureThreshold"] <= liveness["periodSeconds"]


def test_admin_apis_need_the_pod_key(deployed_triton: tuple[TritonServer, str]) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server, key = deployed_triton
    index = server.http_url + "/v2/repository/index"
    assert _http(index, data=b"{}")[0] == 403
    assert _http(index, data=b"{}", headers={"triton-admin-key": "guess"})[0] == 403
    status, body = _http(index, data=b"{}", headers={"triton-admin-key": key})
    assert status == 200 and ENSEMBLE_NAME in {m["name"] for m in json.loads(body)}
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            client.get_model_repository_index()
        reply = client.get_model_repository_index(headers={"triton-grpc-protocol-triton-admin-key": key})
        assert ENSEMBLE_NAME in {m.name for m in reply.models}
        assert client.is_server_ready()  # inference and health stay open to clients
    finally:
        client.close()


def test_queries_use_metrics_triton_exports(deployed_triton: tuple[TritonServer, str]) -> None:
    server, _ = deployed_triton
    body = json.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]})
    for _ in range(3):
        status, _reply = _http(f"{server.http_url}/v2/models/{ENSEMBLE_NAME}/infer", data=body.encode())
        assert status == 200
    monitor = find(rendered("gpu-tensorrt"), "ServiceMonitor")
    status, scrape = _http(server.metrics_url.rsplit("/", 1)[0] + monitor["spec"]["endpoints"][0]["path"])
    assert status == 200
    series = [line for line in scrape.decode().splitlines() if line and not line.startswith("#")]
    exported = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0] for line in series}  # type: ignore[index]
    assert f'nv_inference_request_summary_us{{model="{ENSEMBLE_NAME}",version="1",quantile="0.95"}}' in {
        line.rsplit(" ", 1)[0] for line in series
    }, "p95 summary of the ensemble (--metrics-config summary_latencies) missing"
    for where, expr in _queries().items():
        for metric in set(re.findall(r"\bnv_[a-z0-9_]+", expr)):
            if metric.startswith("nv_gpu_"):
                continue  # DCGM's GPU metrics: only on a GPU node
            assert metric in exported, f"{where}: Triton exports no {metric}"
