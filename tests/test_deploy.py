"""The deployment files: the lock, the image, the Kubernetes manifests and compose.

Offline checks (CI has no network beyond the package registries): the manifests against the
Kubernetes API schemas bundled with kubernetes-validate, compose.yaml against the compose-spec
schema vendored in check-jsonschema, the Dockerfile with hadolint; and the least-privilege and
probe settings that the README promises, read from the files themselves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    assert path, f"{name} is not installed: pip install -r requirements-dev.txt"
    return path


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in _docs(path)]


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _manifests() if d["kind"] == "Deployment"}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- the lock -----------------------------------------------------------------------------------


def test_lock_files_agree_with_pyproject() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_lock.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_lock_check_fails_on_a_dependency_the_lock_does_not_have(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "check_lock.py", tmp_path / "tools")
    for name in ("requirements.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / name, tmp_path)
    pyproject = (ROOT / "pyproject.toml").read_text()
    changed = pyproject.replace(
        "dependencies = [", 'dependencies = [\n    "not-in-the-lock>=1",', 1
    )
    changed = re.sub(r'"orjson>=[^"]*"', '"orjson>=999"', changed)
    (tmp_path / "pyproject.toml").write_text(changed)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "tools" / "check_lock.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "not-in-the-lock>=1 is not pinned" in done.stdout
    assert "orjson>=999 but orjson==" in done.stdout
    assert "bash tools/lock.sh" in done.stdout


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_installs_the_lock_runs_by_uid_and_carries_the_version() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in text
    assert "-r /tmp/requirements.txt" in text
    assert re.search(r"^USER \d+:\d+$", text, re.M), "USER must be numeric (runAsNonRoot)"
    assert f"ARG VERSION={VERSION}\n" in text
    assert 'org.opencontainers.image.version="${VERSION}"' in text


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", None])
def test_manifests_pass_the_kubernetes_schema(version: str | None) -> None:
    import kubernetes_validate

    newest = version or kubernetes_validate.utils.latest_version()
    for doc in _manifests():
        kubernetes_validate.validate(doc, newest, strict=True)


def test_manifests_fail_the_schema_on_a_misspelt_field() -> None:
    import kubernetes_validate

    doc = _deployments()["tradefleet-worker"]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.30", strict=True)


@pytest.mark.parametrize("name", ["tradefleet-worker", "tradefleet-gateway"])
def test_pods_run_least_privileged(name: str) -> None:
    pod = _deployments()[name]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod.get("initContainers", []) + pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == 10001
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["image"] == f"tradefleet:{VERSION}"
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/tmp"}, "only /tmp is writable"
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert requests["memory"] == "128Mi"  # measured: ~112 MiB paper, ~98 MiB kis
        assert limits["memory"] == "192Mi"
        assert "cpu" in requests


@pytest.mark.parametrize("name", ["tradefleet-worker", "tradefleet-gateway"])
def test_probes_use_livez_and_readyz(name: str) -> None:
    container = _deployments()[name]["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = container["livenessProbe"]["httpGet"]["port"]
    health = {p["name"]: p["containerPort"] for p in container["ports"]}[port]
    assert _env(container)["HEALTH_PORT"] == str(health)


def test_worker_migrates_in_an_init_container_and_waits_for_schema_and_session() -> None:
    pod = _deployments()["tradefleet-worker"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["migrate"]
    assert not [d for d in _manifests() if d["kind"] == "Job"], "no fixed-name Job to re-apply"
    (worker,) = pod["containers"]
    env = _env(worker)
    assert worker["args"] == ["run"]
    assert env["WAIT_FOR_SCHEMA"] == "1"
    assert env["WAIT_FOR_SESSION"] == "1"
    assert env["WORKER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_gateway_runs_two_replicas_with_the_kis_secret() -> None:
    gateway = _deployments()["tradefleet-gateway"]
    assert gateway["spec"]["replicas"] == 2
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["gateway"]
    refs = {ref["secretRef"]["name"] for ref in container["envFrom"]}
    assert {"tradefleet-kis", "tradefleet-redis"} <= refs
    relay = {p["name"]: p["containerPort"] for p in container["ports"]}["relay"]
    env = _env(container)
    assert env["GATEWAY_PORT"] == str(relay)
    assert env["GATEWAY_URL"] == f"http://$(POD_IP):{relay}"  # its own address, in the lease
    assert env["GATEWAY_HOST"] == "0.0.0.0"


def test_workers_never_get_the_kis_app_secret() -> None:
    (worker,) = _deployments()["tradefleet-worker"]["spec"]["template"]["spec"]["containers"]
    assert "tradefleet-kis" not in {r["secretRef"]["name"] for r in worker["envFrom"]}
    env = _env(worker)
    assert "KIS_APP_SECRET" not in env
    assert env["KIS_APP_KEY"]["secretKeyRef"]["name"] == "tradefleet-kis"


def test_every_deployment_has_a_disruption_budget() -> None:
    budgets = [d for d in _manifests() if d["kind"] == "PodDisruptionBudget"]
    for name, deployment in _deployments().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert covering, f"{name} has no PodDisruptionBudget"


def test_example_secrets_hold_placeholders_for_every_credential() -> None:
    secrets = {
        d["metadata"]["name"]: d["stringData"] for d in _manifests() if d["kind"] == "Secret"
    }
    assert set(secrets["tradefleet-kis"]) == {"KIS_APP_KEY", "KIS_APP_SECRET", "KIS_ACCOUNT"}
    assert set(secrets["tradefleet-tls"]) == {"postgres-ca.pem", "redis-ca.pem"}
    assert secrets["tradefleet-db"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "sslmode=verify-full" in secrets["tradefleet-db"]["DATABASE_URL"]
    assert secrets["tradefleet-redis"]["REDIS_URL"].startswith("rediss://")
    for values in secrets.values():
        for value in values.values():
            assert "CHANGE-ME" in value or set(value) <= set("0-1"), "placeholders only"


# --- compose ------------------------------------------------------------------------------------


def test_compose_passes_the_compose_spec_schema() -> None:
    done = subprocess.run(
        [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_probes_livez_and_runs_read_only() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for name in ("worker", "gateway"):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "/livez" in test, name
    assert services["gateway"]["profiles"] == ["kis"]
    assert services["gateway"]["command"] == ["gateway"]
    for name in ("migrate", "exchange", "worker", "gateway"):
        service = services[name]
        assert service["image"] == "tradefleet:${TRADEFLEET_VERSION:-" + VERSION + "}", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
