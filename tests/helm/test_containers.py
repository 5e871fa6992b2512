"""The container build files and the compose stack, checked without a container engine.

compose-spec binds the compose_spec Rust crate, a typed parser of the Compose
Specification that rejects unknown keys and checks references between services,
networks and volumes. The Dockerfiles are read as text.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from compose_spec import PyOptions, parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
OTAKO_SERVICES = ("migrate", "gateway-1", "gateway-2", "backend")
# The gateway's default OTAKO_DRAIN_WINDOW_MS, in seconds.
DRAIN_WINDOW_S = 10


def load_compose(text: str) -> dict:
    # Merge keys (<<) as Docker Compose applies them.
    project = PyOptions(apply_merge=True).from_yaml(text)
    project.validate()
    return project.to_dict()


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE.read_text())


def published(service: dict) -> dict[int, int]:
    """Host port -> container port."""
    out = {}
    for spec in service.get("ports", []):
        host, container = str(spec).rsplit(":", 2)[-2:]
        out[int(host)] = int(container)
    return out


def test_the_validator_rejects_unknown_keys():
    with pytest.raises(ValueError):
        load_compose("services:\n  a:\n    image: x\n    imagee: y\n")


def test_compose_has_the_whole_stack(compose):
    assert set(compose["services"]) == {"nats", "postgres", "jaeger", *OTAKO_SERVICES}


def test_published_ports(compose):
    services = compose["services"]
    assert published(services["gateway-1"]) == {8080: 8080, 9090: 9090}
    assert published(services["gateway-2"]) == {8081: 8080, 9091: 9090}
    assert published(services["backend"]) == {8000: 8000}
    assert published(services["jaeger"])[16686] == 16686


def test_nats_runs_jetstream_on_a_recent_server(compose):
    nats = compose["services"]["nats"]
    image, tag = nats["image"].split(":")
    assert image == "nats"
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", tag).groups())
    assert (major, minor) >= (2, 11)
    assert {"-js", "--jetstream"} & set(nats["command"])
    assert "healthcheck" in nats


def test_postgres_has_a_non_superuser_owner(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    mounts = [str(v).split(":") for v in postgres["volumes"]]
    (init,) = [m for m in mounts if m[1].startswith("/docker-entrypoint-initdb.d/")]
    script = (COMPOSE.parent / init[0]).read_text()
    assert re.search(r"CREATE ROLE otako LOGIN NOSUPERUSER", script)
    assert "CREATE DATABASE otako OWNER otako" in script
    for name in OTAKO_SERVICES:
        url = urlparse(compose["services"][name]["environment"]["DATABASE_URL"])
        assert (url.username, url.hostname, url.path) == ("otako", "postgres", "/otako"), name


def test_every_otako_service_is_configured(compose):
    for name in OTAKO_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
        assert env["OTAKO_TOKEN_SECRET"], name
        assert env["OTAKO_LOG_JSON"] == "1", name


def test_token_secret_and_nats_passwords_have_no_default():
    """A default would be a published secret: anyone could sign tokens with it."""
    text = COMPOSE.read_text()
    for var in (
        "OTAKO_TOKEN_SECRET",
        "OTAKO_NATS_GATEWAY_PASSWORD",
        "OTAKO_NATS_BACKEND_PASSWORD",
        "OTAKO_NATS_OPS_PASSWORD",
    ):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, var
        assert all(u.startswith(":?") for u in uses), (var, uses)
    assert "compose-dev-token-secret" not in text


def test_every_published_port_is_on_loopback(compose):
    for name, service in compose["services"].items():
        for spec in service.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), (name, spec)


def test_nats_runs_the_shipped_least_privilege_config(compose):
    nats = compose["services"]["nats"]
    command = nats["command"]
    assert command[command.index("-c") + 1] == "/etc/nats/otako.conf"
    mounts = [str(v.get("source", v)) if isinstance(v, dict) else str(v) for v in nats["volumes"]]
    assert any("nats/otako.conf" in m for m in mounts), mounts
    assert (DEPLOY / "nats" / "otako.conf").is_file()
    for var in ("OTAKO_NATS_GATEWAY_PASSWORD", "OTAKO_NATS_BACKEND_PASSWORD", "OTAKO_NATS_OPS_PASSWORD"):
        assert var in nats["environment"], var
    users = {
        "gateway-1": "otako-gateway",
        "gateway-2": "otako-gateway",
        "backend": "otako-backend",
    }
    for name, user in users.items():
        url = compose["services"][name]["environment"]["OTAKO_NATS_URL"]
        assert url.startswith(f"nats://{user}:"), (name, url)
        assert url.endswith("@nats:4222"), (name, url)
    # Migrations use no NATS.
    assert "OTAKO_NATS_URL" not in compose["services"]["migrate"]["environment"]


def test_gateways_are_distinct_nodes(compose):
    ids = {compose["services"][g]["environment"]["OTAKO_NODE_ID"] for g in ("gateway-1", "gateway-2")}
    assert len(ids) == 2


def test_migrations_run_once_before_the_services(compose):
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["image"] == services["gateway-1"]["image"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("gateway-1", "gateway-2", "backend"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["nats"]["condition"] == "service_healthy", name


def test_gateways_get_time_to_drain(compose):
    for name in ("gateway-1", "gateway-2"):
        grace = parse_duration(compose["services"][name]["stop_grace_period"])
        assert grace > DRAIN_WINDOW_S, name


def test_otako_containers_are_locked_down(compose):
    for name in OTAKO_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert not service["user"].startswith("0"), name


def test_dockerignore_excludes_local_state():
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"target", ".venv", ".otako"} <= ignored


@pytest.mark.parametrize(
    "dockerfile, package, ports",
    [
        ("Dockerfile.gateway", "otako-gateway", {8080, 9090}),
        ("Dockerfile.backend-shim", "otako-backend-shim", {8000}),
    ],
)
def test_dockerfiles_build_small_non_root_images(dockerfile, package, ports):
    text = (DEPLOY / dockerfile).read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(stages) >= 2, "multi-stage"
    assert stages[0][0] == "rust:1-bookworm"
    assert re.search(rf"cargo build --release\b.*-p {package}\b", text)
    final = text[text.rindex("\nFROM ") :]
    assert "distroless/cc-debian12" in final or "debian:bookworm-slim" in final
    (user,) = re.findall(r"^USER\s+(\S+)", final, re.M)
    uid = user.split(":")[0]
    # Numeric, so Kubernetes can check runAsNonRoot against the image.
    assert uid.isdigit() and int(uid) != 0
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", final, re.M) for p in line.split()}
    assert exposed == ports
    assert f"/usr/local/bin/{package}" in re.search(r"^ENTRYPOINT\s+(.+)$", final, re.M).group(1)
