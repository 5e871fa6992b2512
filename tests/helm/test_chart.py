"""The Helm chart, rendered by Helm's own engine and checked against Kubernetes' schemas.

helm-python-sdk binds Helm v4's Go SDK (a shared library inside the wheel), so lint,
values.schema.json validation and rendering are exactly what `helm lint` and
`helm template` do, with no helm binary and no network. kubernetes-validate ships the
Kubernetes OpenAPI schemas; the newest version it has is the one checked against.
"""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

CHART = Path(__file__).resolve().parents[2] / "helm" / "otako"
PRODUCTION = CHART / "values-production.yaml"
RELEASE = "otako"
NAMESPACE = "chat"
KUBE_VERSION = latest_version()

# Custom resources: kubernetes-validate only knows the built-in API, so these are
# skipped there and checked by the assertions further down instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

SECRET_ENV = ("OTAKO_TOKEN_SECRET", "DATABASE_URL", "OTAKO_NATS_URL")
HOOK = "helm.sh/hook"


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
NETWORK_POLICY = {
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [MONITORING],
        "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 4318}]}],
    }
}

PROFILES = {"default": {}, "production": production_values(), "network-policy": NETWORK_POLICY}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@lru_cache(maxsize=None)
def _render_cached(values_json: str) -> tuple:
    with helm.Chart.load(CHART) as loaded:
        manifests = loaded.render(
            json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return tuple(objects)


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders for `values`, hooks included."""
    return copy.deepcopy(list(_render_cached(json.dumps(values or {}, sort_keys=True))))


def merged(values: dict) -> dict:
    with helm.Chart.load(CHART) as loaded:
        return loaded.merge_values(values)


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, component: str | None = None) -> dict:
    found = [
        o
        for o in of_kind(objects, kind)
        if component is None
        or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def container_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


profiles = pytest.mark.parametrize("values", PROFILES.values(), ids=list(PROFILES))


def test_kubernetes_version_is_current():
    major, minor = (int(x) for x in KUBE_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 33), f"kubernetes-validate only ships up to {KUBE_VERSION}"


@profiles
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=2)
    assert report["total_charts_linted"] == 1


@profiles
def test_every_manifest_matches_the_kubernetes_schema(values):
    validated, skipped, failures = [], [], []
    for obj in render(values):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            # No schema for it in kubernetes-validate; make sure that is still why.
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            skipped.append(name)
            continue
        try:
            # strict: unknown fields fail too, so a mis-indented key does not pass silently.
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            validated.append(name)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except SchemaNotFoundError:
            failures.append(f"{name}: {obj['apiVersion']} is not served by Kubernetes {KUBE_VERSION}")
    assert failures == [], "\n".join(failures)
    assert {"Deployment", "Service", "Job"} <= {n.split("/")[0] for n in validated}
    if values.get("serviceMonitor", {}).get("enabled"):
        assert skipped, "the ServiceMonitors were expected, and skipped as CRDs"


@pytest.mark.parametrize(
    "values, gateway, backend",
    [
        ({}, 2, 2),
        ({"gateway": {"replicas": 4}, "backendShim": {"replicas": 3}}, 4, 3),
        ({"gateway": {"replicas": 0}}, 0, 2),
    ],
)
def test_replicas_follow_values(values, gateway, backend):
    objects = render(values)
    assert one(objects, "Deployment", "gateway")["spec"]["replicas"] == gateway
    assert one(objects, "Deployment", "backend-shim")["spec"]["replicas"] == backend


def test_production_scales_out():
    prod = production_values()
    objects = render(prod)
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == prod["gateway"]["autoscaling"]["minReplicas"] >= 6
    assert hpa["spec"]["maxReplicas"] == prod["gateway"]["autoscaling"]["maxReplicas"]
    assert prod["gateway"]["replicas"] >= 6
    # The HPA owns the count: a replicas field would reset it on every upgrade.
    assert "replicas" not in one(objects, "Deployment", "gateway")["spec"]
    assert one(objects, "Deployment", "backend-shim")["spec"]["replicas"] == 3


def test_hpa_only_when_enabled():
    assert of_kind(render({}), "HorizontalPodAutoscaler") == []
    objects = render({"gateway": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}}})
    hpa = one(objects, "HorizontalPodAutoscaler")
    deployment = one(objects, "Deployment", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert "replicas" not in deployment["spec"]


def test_gateway_worker_threads_follow_values():
    def threads(values: dict | None) -> str | None:
        gateway = one(render(values), "Deployment", "gateway")
        env = env_of(gateway["spec"]["template"]["spec"]["containers"][0])
        return env.get("TOKIO_WORKER_THREADS", {}).get("value")

    assert threads(None) is None, "unset: Tokio sizes itself to the pod's cores"
    assert threads({"gateway": {"workerThreads": 3}}) == "3"
    assert threads(production_values()) == "1", "production has no CPU limit to size by"
    with pytest.raises(helm.HelmValuesError, match="workerThreads"):
        render({"gateway": {"workerThreads": 0}})


def test_hpa_bounds_are_checked():
    with pytest.raises(helm.HelmRenderError, match="minReplicas"):
        render({"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}})


@profiles
def test_gateway_probes_use_the_admin_port(values):
    gateway = one(render(values), "Deployment", "gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    admin = 9090
    assert env_of(container)["OTAKO_ADMIN_LISTEN"]["value"].endswith(f":{admin}")
    probes = (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz"))
    for probe, path in probes:
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == admin, probe


@profiles
def test_backend_probes_use_its_http_port(values):
    backend = one(render(values), "Deployment", "backend-shim")
    (container,) = backend["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert container_port(container, get["port"]) == 8000


def grace_and_drain(objects: list[dict]) -> tuple[int, float]:
    pod = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    drain_ms = int(env_of(pod["containers"][0])["OTAKO_DRAIN_WINDOW_MS"]["value"])
    return pod["terminationGracePeriodSeconds"], drain_ms / 1000


@pytest.mark.parametrize(
    "values",
    [*PROFILES.values(), {"gateway": {"drainWindowMs": 45500}}, {"gateway": {"drainWindowMs": 0}}],
    ids=[*PROFILES, "long-window", "no-window"],
)
def test_grace_period_outlasts_the_drain_window(values):
    grace, drain = grace_and_drain(render(values))
    assert grace > drain
    want = merged(values)["gateway"]
    assert want["drainWindowMs"] / 1000 == drain, "the gateway gets the configured window"
    # Helm drops null values when merging, so "unset" reads as missing.
    if want.get("terminationGracePeriodSeconds") is None:
        assert grace == math.ceil(drain) + want["drainMarginSeconds"]


def test_explicit_grace_period_must_exceed_the_drain_window():
    grace, _ = grace_and_drain(render({"gateway": {"terminationGracePeriodSeconds": 11}}))
    assert grace == 11
    with pytest.raises(helm.HelmRenderError, match="must exceed the drain window"):
        render({"gateway": {"terminationGracePeriodSeconds": 10, "drainWindowMs": 10000}})


@profiles
def test_secrets_are_only_referenced(values):
    objects = render(values)
    secret_name = values.get("existingSecret") or f"{RELEASE}-secrets"
    specs = pod_specs(objects)
    assert len(specs) == 3  # gateway, backend shim, migration job
    for where, spec in specs:
        for c in containers(spec):
            env = env_of(c)
            for name in SECRET_ENV:
                assert name in env, f"{where}/{c['name']} lacks {name}"
                assert "value" not in env[name], f"{where}/{c['name']} inlines {name}"
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret_name


def test_secret_values_appear_only_in_the_secret():
    canaries = {
        "tokenSecret": "canary-token-7f3a-0123456789abcdefghij",
        "database": {"url": "postgres://otako:canary-pw-91c2@db:5432/otako"},
        "nats": {"url": "nats://canary-user:canary-pw-55d0@nats:4222"},
    }
    for obj in render(canaries):
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for canary in ("canary-token-7f3a", "canary-pw-91c2", "canary-pw-55d0"):
            assert canary not in text, f"{obj['kind']}/{obj['metadata']['name']} leaks {canary}"


@profiles
def test_pods_are_locked_down(values):
    for where, spec in pod_specs(render(values)):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in containers(spec):
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert "resources" in c and c["resources"].get("requests"), where


@profiles
def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(values):
    objects = render(values)
    job = one(objects, "Job", "migrate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations[HOOK].split(",")) == {"pre-install", "pre-upgrade"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] + container["args"] == ["otako-gateway", "migrate"]
    gateway = one(objects, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == gateway["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # A chart-made Secret must exist before the Job that reads it: a hook of lower weight.
    for secret in of_kind(objects, "Secret"):
        s_ann = secret["metadata"]["annotations"]
        assert set(s_ann[HOOK].split(",")) >= {"pre-install", "pre-upgrade"}
        assert int(s_ann["helm.sh/hook-weight"]) < int(annotations.get("helm.sh/hook-weight", 0))


def test_migrations_can_be_turned_off():
    assert of_kind(render({"migrations": {"enabled": False}}), "Job") == []


def test_chart_creates_the_secret_unless_one_exists():
    (secret,) = of_kind(render({}), "Secret")
    assert set(secret["data"]) == set(SECRET_ENV)
    generated = secret["data"]["OTAKO_TOKEN_SECRET"]
    assert len(generated) > 40, "a generated token secret of reasonable length"

    objects = render({"existingSecret": "my-creds", "database": {"url": ""}})
    assert of_kind(objects, "Secret") == []
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in pod_specs(objects)
        for c in containers(spec)
        for e in c["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs == {"my-creds"}


def test_production_uses_its_existing_secret():
    prod = production_values()
    assert prod["existingSecret"]
    assert of_kind(render(prod), "Secret") == []


def test_existing_secret_key_names_are_configurable():
    objects = render({"existingSecret": "cnpg-app", "secretKeys": {"databaseUrl": "uri"}})
    (_, spec), *_ = pod_specs(objects)
    assert env_of(spec["containers"][0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "cnpg-app",
        "key": "uri",
    }


@profiles
def test_otel_endpoint_reaches_both_binaries(values):
    endpoint = values.get("otel", {}).get("endpoint")
    for where, spec in pod_specs(render(values)):
        env = env_of(spec["containers"][0])
        if endpoint:
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint, where
        else:
            assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env, where


@profiles
def test_gateway_service_exposes_ws_and_admin(values):
    objects = render(values)
    ports = {p["name"]: p["port"] for p in one(objects, "Service", "gateway")["spec"]["ports"]}
    assert ports == {"ws": 8080, "admin": 9090}
    backend = {p["name"]: p["port"] for p in one(objects, "Service", "backend-shim")["spec"]["ports"]}
    assert backend == {"http": 8000}


@profiles
def test_services_select_their_pods(values):
    objects = render(values)
    for component in ("gateway", "backend-shim"):
        selector = one(objects, "Service", component)["spec"]["selector"]
        pod_labels = one(objects, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items(), component


@profiles
def test_gateway_pods_spread_and_are_protected_from_mass_eviction(values):
    objects = render(values)
    pod = one(objects, "Deployment", "gateway")["spec"]["template"]
    constraints = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} >= {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for c in constraints:
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    pdb = one(objects, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_ingress_is_optional_and_websocket_friendly():
    assert of_kind(render({}), "Ingress") == []
    objects = render(production_values())
    ingress = one(objects, "Ingress", "gateway")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/gateway"
    backend = path["backend"]["service"]
    assert backend["name"] == one(objects, "Service", "gateway")["metadata"]["name"]
    assert backend["port"] == {"name": "ws"}
    assert ingress["spec"]["tls"], "production terminates TLS at the ingress"


def test_service_monitor_scrapes_the_admin_port():
    assert of_kind(render({}), "ServiceMonitor") == []
    objects = render(production_values())
    monitors = of_kind(objects, "ServiceMonitor")
    gateway_service = one(objects, "Service", "gateway")
    (gateway_monitor,) = [
        m
        for m in monitors
        if m["spec"]["selector"]["matchLabels"].items() <= gateway_service["metadata"]["labels"].items()
    ]
    (endpoint,) = gateway_monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    port = next(p for p in gateway_service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["port"] == 9090
    assert gateway_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_images_are_configurable():
    objects = render(
        {"image": {"gateway": {"repository": "r.example/gw", "tag": "1.2.3"}, "backendShim": {"tag": "9"}}}
    )
    image = lambda kind, comp: one(objects, kind, comp)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image("Deployment", "gateway") == "r.example/gw:1.2.3"
    assert image("Job", "migrate") == "r.example/gw:1.2.3"
    assert image("Deployment", "backend-shim") == "otako/otako-backend-shim:9"


@pytest.mark.parametrize(
    "bad",
    [
        {"gateway": {"replicas": -1}},
        {"gatway": {"replicas": 2}},
        {"otel": {"protocol": "udp"}},
        {"gateway": {"drainWindowMs": "10s"}},
        {"ingress": {"enabled": True, "hosts": []}},
        {"image": {"gateway": {"pullPolicy": "Sometimes"}}},
    ],
    ids=["negative-replicas", "typo", "protocol", "drain-type", "ingress-no-host", "pull-policy"],
)
def test_schema_rejects_bad_values(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(bad))
    with pytest.raises(helm.HelmValuesError):
        render(bad)


def test_schema_covers_every_default_value(chart):
    """Each key in values.yaml is described in values.schema.json."""

    def walk(values, schema, path):
        props = schema.get("properties")
        if not isinstance(values, dict) or props is None:
            return
        for key, value in values.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            sub = props[key]
            if "$ref" in sub:
                sub = chart.schema["definitions"][sub["$ref"].rsplit("/", 1)[1]]
            walk(value, sub, f"{path}{key}.")

    walk(chart.values, chart.schema, "")
    chart.validate_schema(chart.values)


# --- NetworkPolicy -----------------------------------------------------------------


def policies(values: dict) -> dict[str, dict]:
    """NetworkPolicies by the component label."""
    return {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in of_kind(render(values), "NetworkPolicy")
    }


def pod_labels(objects: list[dict], kind: str, component: str) -> dict:
    return one(objects, kind, component)["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def rule_ports(rules: list[dict]) -> set:
    return {p["port"] for r in rules for p in r.get("ports", [])}


def test_network_policy_is_off_by_default():
    assert of_kind(render({}), "NetworkPolicy") == []
    assert of_kind(render(production_values()), "NetworkPolicy") == []


def test_network_policies_select_the_chart_pods():
    objects = render(NETWORK_POLICY)
    by = policies(NETWORK_POLICY)
    assert set(by) == {"gateway", "backend-shim", "migrate", "nats-access", "postgresql-access"}
    for component, kind in (("gateway", "Deployment"), ("backend-shim", "Deployment"), ("migrate", "Job")):
        assert selects(by[component]["spec"]["podSelector"], pod_labels(objects, kind, component)), component
        assert set(by[component]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, component


def test_no_rule_admits_everyone_by_accident():
    """An empty `from`/`to` list admits all peers: the chart leaves such rules out."""
    for values in (NETWORK_POLICY, {"networkPolicy": {"enabled": True}}):
        for name, p in policies(values).items():
            for rule in p["spec"].get("ingress", []):
                assert rule.get("from", None) != [], name
            for rule in p["spec"].get("egress", []):
                assert rule.get("to", None) != [], name
                assert "to" in rule, f"{name}: an egress rule to anywhere"


def test_gateway_client_port_is_open_and_admin_port_only_to_metrics_scrapers():
    gw = policies(NETWORK_POLICY)["gateway"]["spec"]
    (ws,) = [r for r in gw["ingress"] if rule_ports([r]) == {"ws"}]
    assert "from" not in ws, "WebSocket clients come from anywhere by default"
    (admin,) = [r for r in gw["ingress"] if rule_ports([r]) == {"admin"}]
    assert admin["from"] == [MONITORING]
    # Without metricsFrom the admin port is closed (no rule at all).
    closed = policies({"networkPolicy": {"enabled": True}})["gateway"]["spec"]
    assert rule_ports(closed["ingress"]) == {"ws"}
    # Clients can be narrowed to e.g. the ingress controller.
    ingress_nginx = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    narrowed = policies({"networkPolicy": {"enabled": True, "gateway": {"clientsFrom": [ingress_nginx]}}})
    (ws,) = [r for r in narrowed["gateway"]["spec"]["ingress"] if rule_ports([r]) == {"ws"}]
    assert ws["from"] == [ingress_nginx]


def test_egress_reaches_only_nats_postgresql_and_dns():
    by = policies({"networkPolicy": {"enabled": True}})
    assert rule_ports(by["gateway"]["spec"]["egress"]) == {4222, 5432, 53}
    assert rule_ports(by["backend-shim"]["spec"]["egress"]) == {4222, 5432, 53}
    # The migration Job needs PostgreSQL only, and nothing connects to it.
    assert rule_ports(by["migrate"]["spec"]["egress"]) == {5432, 53}
    assert by["migrate"]["spec"].get("ingress", []) == []
    # extraEgress is appended, e.g. for the OTLP collector.
    assert 4318 in rule_ports(policies(NETWORK_POLICY)["gateway"]["spec"]["egress"])
    no_dns = policies({"networkPolicy": {"enabled": True, "dns": {"enabled": False}}})
    assert rule_ports(no_dns["gateway"]["spec"]["egress"]) == {4222, 5432}


def test_nats_and_postgresql_admit_only_the_pods_that_use_them():
    objects = render(NETWORK_POLICY)
    by = policies(NETWORK_POLICY)
    gateway = pod_labels(objects, "Deployment", "gateway")
    backend = pod_labels(objects, "Deployment", "backend-shim")
    migrate = pod_labels(objects, "Job", "migrate")

    nats = by["nats-access"]["spec"]
    assert nats["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "nats"}}
    assert nats["policyTypes"] == ["Ingress"]
    (clients,) = [r for r in nats["ingress"] if rule_ports([r]) == {4222}]
    admitted = [peer["podSelector"] for peer in clients["from"]]
    assert len(admitted) == 2
    assert any(selects(s, gateway) for s in admitted) and any(selects(s, backend) for s in admitted)
    assert not any(selects(s, migrate) for s in admitted), "migrations use no NATS"
    # The servers reach each other (routes), and the scrapers the monitoring port.
    assert {"from": [{"podSelector": nats["podSelector"]}]} in nats["ingress"]
    (monitor,) = [r for r in nats["ingress"] if rule_ports([r]) == {8222}]
    assert monitor["from"] == [MONITORING]

    pg = by["postgresql-access"]["spec"]
    (clients,) = [r for r in pg["ingress"] if rule_ports([r]) == {5432}]
    admitted = [peer["podSelector"] for peer in clients["from"]]
    assert len(admitted) == 3
    for labels in (gateway, backend, migrate):
        assert any(selects(s, labels) for s in admitted)

    # Turned off, e.g. when NATS or PostgreSQL live elsewhere.
    off = policies({"networkPolicy": {"enabled": True, "nats": {"protect": False}, "postgresql": {"protect": False}}})
    assert set(off) == {"gateway", "backend-shim", "migrate"}


def test_network_policy_schema_rejects_bad_values(chart):
    for bad in (
        {"networkPolicy": {"enabled": True, "metricsFrom": [{}]}},
        {"networkPolicy": {"enabled": True, "nats": {"port": 0}}},
        {"networkPolicy": {"enabled": True, "nats": {"to": []}}},
        {"networkPolicy": {"enabeld": True}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(chart.merge_values(bad))


# --- The generated token secret ------------------------------------------------------


def test_generated_token_secret_is_kept_from_the_live_secret():
    """`helm install`/`upgrade` render with a cluster: the template looks the chart's
    own Secret up and keeps its token. (`helm template` has no cluster, so lookup is
    empty there; helm/README.md says to use existingSecret with GitOps.)"""
    text = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert 'dig "data" .Values.secretKeys.tokenSecret "" $live' in text
    assert "default (randAlphaNum 48) $token" in text
    readme = (CHART.parent / "README.md").read_text()
    assert "existingSecret" in readme and "GitOps" in readme


def test_a_set_token_secret_renders_the_same_on_every_render():
    token = "x" * 8 + "0123456789abcdefghijklmnopqrstuv"
    first = of_kind(render({"tokenSecret": token}), "Secret")[0]["data"]["OTAKO_TOKEN_SECRET"]
    _render_cached.cache_clear()
    second = of_kind(render({"tokenSecret": token}), "Secret")[0]["data"]["OTAKO_TOKEN_SECRET"]
    assert first == second


def test_existing_secret_renders_no_secret_and_nothing_to_regenerate():
    objects = render({"existingSecret": "otako-credentials"})
    assert of_kind(objects, "Secret") == []


def test_schema_rejects_a_short_token_secret(chart):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values({"tokenSecret": "too-short-a-secret"}))
    chart.validate_schema(chart.merge_values({"tokenSecret": "y" * 32}))
