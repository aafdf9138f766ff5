"""Static checks of deploy/: compose, Kubernetes, Prometheus and Grafana files against the code."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import prometheus_client
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
# Oldest Kubernetes the manifests target: the StatefulSet pod-index label (SEMSEARCH_SHARD) is 1.28+.
K8S_VERSION = "1.30.0"
# Triton's own metrics used by the dashboard and rules (exported by tritonserver on :8002, not by
# our code, so they cannot come from the Python registry).
TRITON_METRICS = {
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_success",
}
# Prometheus' own series.
BUILTIN_METRICS = {"up"}
# Ports the code defaults to and the deploy files must use (services/*/config.py).
PORTS = {"gateway": (7000, 9000), "indexer": (7100, 9100)}
EXPLORER_PORT = 8080
READINESS_SERVICE = {"gateway": "semsearch.v1.Search", "indexer": "semsearch.v1.Indexer"}
REQUIRED_ENV = {
    "gateway": {"SEMSEARCH_SHARDS", "SEMSEARCH_TRITON_URL", "SEMSEARCH_REDIS_URL", "SEMSEARCH_GATEWAY_HOST"},
    "indexer": {"SEMSEARCH_SHARD", "SEMSEARCH_NUM_SHARDS", "SEMSEARCH_DATA_DIR", "SEMSEARCH_INDEXER_HOST"},
}


def env_names_read_by_code() -> set[str]:
    """Every SEMSEARCH_* variable name that appears as a string literal in the services or package."""
    names: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("semsearch/**/*.py")]:
        names.update(re.findall(r"[\"'](SEMSEARCH_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_role(name: str) -> str | None:
    if name == "gateway":
        return "gateway"
    if name.startswith("indexer-"):
        return "indexer"
    return None


def k8s_docs(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def merge_patch(base: dict, patch: dict) -> dict:
    """A strategic-merge patch as kustomize applies ours: maps merge, containers merge by name."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key == "containers":
            by_name = {c["name"]: c for c in out[key]}
            for c in value:
                by_name[c["name"]] = merge_patch(by_name.get(c["name"], {}), c)
            out[key] = list(by_name.values())
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def overlay_docs(name: str) -> list[dict]:
    """Base manifests with the overlay's patches applied (what `kubectl kustomize` renders)."""
    folder = DEPLOY / "k8s" / "overlays" / name
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../../base"]
    docs = k8s_docs(DEPLOY / "k8s" / "base")
    for entry in kust.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text())
        hits = [
            i
            for i, d in enumerate(docs)
            if (d["kind"], d["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(hits) == 1, f"{entry['path']} patches no single base resource"
        docs[hits[0]] = merge_patch(docs[hits[0]], patch)
    return docs


def workload_containers(docs: list[dict]) -> dict[str, dict]:
    """The first container of the gateway Deployment and the indexer StatefulSet."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] in PORTS:
            out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]["containers"][0]
    return out


# --- compose -----------------------------------------------------------------------------------


def test_compose_validates_against_compose_spec() -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_env_names_ports_and_publishing_match_the_code() -> None:
    known = env_names_read_by_code()
    services = compose()["services"]
    roles = {name: compose_role(name) for name in services}
    assert sorted(n for n, r in roles.items() if r == "indexer") == ["indexer-0", "indexer-1"]
    for name, role in roles.items():
        svc = services[name]
        if role is None:
            continue
        env = svc["environment"]
        assert set(env) <= known, f"{name}: env names the code never reads: {set(env) - known}"
        assert REQUIRED_ENV[role] <= set(env), f"{name}: missing {REQUIRED_ENV[role] - set(env)}"
        grpc_port, metrics_port = PORTS[role]
        prefix = "SEMSEARCH_GATEWAY" if role == "gateway" else "SEMSEARCH_INDEXER"
        assert int(env[f"{prefix}_PORT"]) == grpc_port
        assert int(env[f"{prefix}_METRICS_PORT"]) == metrics_port
        assert env[f"{prefix}_HOST"] == "0.0.0.0"
        probe_port = int(env["SEMSEARCH_GATEWAY_HEALTH_PORT"]) if role == "gateway" else grpc_port
        check = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{probe_port}')" in check and f"service='{READINESS_SERVICE[role]}'" in check
    shards = services["gateway"]["environment"]["SEMSEARCH_SHARDS"].split(",")
    assert services["indexer-0"]["environment"]["SEMSEARCH_PEERS"].split(",") == shards
    assert shards == [f"indexer-{i}:{PORTS['indexer'][0]}" for i in range(2)], "shard order = shard number"
    for i in range(2):
        env = services[f"indexer-{i}"]["environment"]
        assert (env["SEMSEARCH_SHARD"], env["SEMSEARCH_NUM_SHARDS"]) == (str(i), "2")
    assert services["gateway"]["environment"]["SEMSEARCH_TRITON_URL"] == "triton:8001"
    # The explorer: a client of the gateway, on the port its config reads, checked at /healthz.
    explorer = services["explorer"]
    assert set(explorer["environment"]) <= known
    assert explorer["environment"]["SEMSEARCH_GATEWAY"] == "gateway:7000"
    assert explorer["environment"]["SEMSEARCH_EXPLORER_PORT"] == str(EXPLORER_PORT)
    assert f"127.0.0.1:{EXPLORER_PORT}/healthz" in " ".join(explorer["healthcheck"]["test"])
    # Only the gateway, the explorer and Grafana are published, and only on loopback.
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert set(published) == {"gateway", "explorer", "grafana"}
    assert all(str(p).startswith("127.0.0.1:") for ports in published.values() for p in ports)
    assert services["triton"]["shm_size"] and services["triton-gpu"]["shm_size"]
    assert "--model-config-name=cpu" in services["triton"]["command"]
    assert services["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_manifests_validate_strictly(overlay: str, tmp_path: Path) -> None:
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(overlay_docs(overlay), sort_keys=False))
    files = [out]
    kubectl = shutil.which("kubectl")
    if kubectl:  # also the real kustomize rendering, where kubectl is installed
        rendered = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (tmp_path / "rendered.yaml").write_text(rendered)
        files.append(tmp_path / "rendered.yaml")
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_env_ports_probes_and_security_match_the_code(overlay: str) -> None:
    docs = overlay_docs(overlay)
    known = env_names_read_by_code()
    containers = workload_containers(docs)
    assert set(containers) == {"gateway", "indexer"}
    for role, c in containers.items():
        env = {e["name"]: e for e in c["env"]}
        assert set(env) <= known, f"{role}: env names the code never reads: {set(env) - known}"
        assert REQUIRED_ENV[role] <= set(env), f"{role}: missing {REQUIRED_ENV[role] - set(env)}"
        grpc_port, metrics_port = PORTS[role]
        prefix = "SEMSEARCH_GATEWAY" if role == "gateway" else "SEMSEARCH_INDEXER"
        assert int(env[f"{prefix}_PORT"]["value"]) == grpc_port
        assert int(env[f"{prefix}_METRICS_PORT"]["value"]) == metrics_port
        # The gateway's probes use its plaintext health-only port (the gRPC port may use TLS).
        probe_port = int(env["SEMSEARCH_GATEWAY_HEALTH_PORT"]["value"]) if role == "gateway" else grpc_port
        assert {p["containerPort"] for p in c["ports"]} == {grpc_port, metrics_port, probe_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == probe_port, f"{role} {probe}"
        # Liveness is the process (health ""); readiness is the service, which follows dependencies.
        assert "service" not in c["livenessProbe"]["grpc"]
        assert c["readinessProbe"]["grpc"]["service"] == READINESS_SERVICE[role]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = by_kind[("StatefulSet", "indexer")]
    replicas = sts["spec"]["replicas"]
    indexer_env = {e["name"]: e for e in containers["indexer"]["env"]}
    assert int(indexer_env["SEMSEARCH_NUM_SHARDS"]["value"]) == replicas
    assert sts["spec"]["serviceName"] == "indexer" and sts["spec"]["volumeClaimTemplates"]
    assert by_kind[("Service", "indexer")]["spec"]["clusterIP"] == "None"
    gateway_env = {e["name"]: e for e in containers["gateway"]["env"]}
    assert gateway_env["SEMSEARCH_SHARDS"]["value"].split(",") == [
        f"indexer-{i}.indexer:{PORTS['indexer'][0]}" for i in range(replicas)
    ]
    assert indexer_env["SEMSEARCH_PEERS"]["value"] == gateway_env["SEMSEARCH_SHARDS"]["value"]
    # The API keys come from a Secret the operator creates; no key is committed.
    assert gateway_env["SEMSEARCH_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "gateway-api-keys"
    assert not any(d["kind"] == "Secret" for d in docs)
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert (kind, "gateway") in by_kind
    assert ("HorizontalPodAutoscaler", "triton") in by_kind
    explorer = by_kind[("Deployment", "explorer")]["spec"]["template"]["spec"]["containers"][0]
    explorer_env = {e["name"]: e for e in explorer["env"]}
    assert {n for n in explorer_env if n.startswith("SEMSEARCH_")} <= known
    assert explorer_env["SEMSEARCH_GATEWAY"]["value"] == "gateway:7000"
    assert int(explorer_env["SEMSEARCH_EXPLORER_PORT"]["value"]) == EXPLORER_PORT
    assert explorer_env["SEMSEARCH_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "explorer-api-key"
    assert explorer["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert explorer["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert by_kind[("Service", "explorer")]["spec"]["type"] == "ClusterIP"
    triton = by_kind[("Deployment", "triton")]["spec"]["template"]["spec"]["containers"][0]
    gpus = triton["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")
    assert ("--model-config-name=cpu" in triton["args"]) == (overlay == "cpu")


def ingress_allowed(docs: list[dict], source: dict[str, str], namespace: str, target: str, port: int) -> bool:
    """Kubernetes NetworkPolicy semantics for ingress: a pod selected by any policy is isolated and
    admits a connection when some rule of a policy selecting it matches the source and the port."""

    def selects(selector: dict, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    target_labels = {"app.kubernetes.io/name": target}
    policies = [
        d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], target_labels)
    ]
    assert policies, f"{target} is selected by no NetworkPolicy"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and port not in {p["port"] for p in ports}:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "namespaceSelector" in peer:
                    ns_labels = {"kubernetes.io/metadata.name": namespace}
                    if selects(peer["namespaceSelector"], ns_labels):
                        return True
                elif namespace == "semsearch" and selects(peer["podSelector"], source):
                    return True
    return False


def egress_allowed(docs: list[dict], source: str, target: dict[str, str], namespace: str, port: int) -> bool:
    """NetworkPolicy semantics for egress: a pod selected by a policy with Egress in its policyTypes may
    only open connections some egress rule of such a policy allows."""

    def selects(selector: dict, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    source_labels = {"app.kubernetes.io/name": source}
    policies = [
        d for d in docs
        if d["kind"] == "NetworkPolicy" and "Egress" in d["spec"].get("policyTypes", [])
        and selects(d["spec"]["podSelector"], source_labels)
    ]  # fmt: skip
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            if port not in {p["port"] for p in rule.get("ports", [])}:
                continue
            for peer in rule.get("to", []):
                ns_ok = (
                    selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                    if "namespaceSelector" in peer
                    else namespace == "semsearch"
                )
                if ns_ok and selects(peer.get("podSelector", {}), target):
                    return True
    return False


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_explorer_reaches_the_gateway_only_and_only_the_namespace_reaches_it(overlay: str) -> None:
    docs = overlay_docs(overlay)

    def pod(name: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": name}

    assert egress_allowed(docs, "explorer", pod("gateway"), "semsearch", 7000)
    assert egress_allowed(docs, "explorer", {"k8s-app": "kube-dns"}, "kube-system", 53)
    for target, port in (("indexer", 7100), ("redis", 6379), ("triton", 8001), ("gateway", 9000)):
        assert not egress_allowed(docs, "explorer", pod(target), "semsearch", port), target
    assert not egress_allowed(docs, "explorer", {}, "elsewhere", 443)
    assert ingress_allowed(docs, pod("some-other-app"), "semsearch", "explorer", EXPLORER_PORT)
    assert not ingress_allowed(docs, {}, "elsewhere", "explorer", EXPLORER_PORT)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_network_policy_lets_only_the_gateway_reach_the_backends(overlay: str) -> None:
    docs = overlay_docs(overlay)

    def pod(name: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": name}

    backends = [("indexer", 7100), ("redis", 6379), ("triton", 8001)]
    for target, port in backends:
        assert ingress_allowed(docs, pod("gateway"), "semsearch", target, port), target
        for stranger in ("explorer", "some-other-app"):
            assert not ingress_allowed(docs, pod(stranger), "semsearch", target, port), (stranger, target)
        assert not ingress_allowed(docs, {}, "monitoring", target, port), target
        assert not ingress_allowed(docs, pod("gateway"), "elsewhere", target, port), target
    assert ingress_allowed(docs, pod("indexer"), "semsearch", "indexer", 7100)  # shard 0 coordinates
    for stranger in ("some-other-app", "explorer"):
        assert ingress_allowed(docs, pod(stranger), "semsearch", "gateway", 7000)
    assert ingress_allowed(docs, {}, "elsewhere", "gateway", 7000)
    for target, port in (("gateway", 9000), ("indexer", 9100), ("triton", 8002)):
        assert ingress_allowed(docs, {}, "monitoring", target, port), target
        assert not ingress_allowed(docs, pod("some-other-app"), "semsearch", target, port), target


# --- Prometheus and Grafana --------------------------------------------------------------------


def test_promtool_checks_config_and_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh installs the Debian package `prometheus`"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"]):
        result = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def registry_names() -> set[str]:
    """Sample names (with _bucket/_sum/_count/_total suffixes) of every metric the code defines."""
    import semsearch.rpc  # noqa: F401
    import services.gateway.embedder_client
    import services.gateway.metrics
    import services.indexer.metrics  # noqa: F401

    names = set()
    for metric in prometheus_client.REGISTRY.collect():
        names.add(metric.name)
        if metric.type == "histogram":
            names.update(f"{metric.name}{s}" for s in ("_bucket", "_sum", "_count"))
        elif metric.type == "counter":
            names.add(f"{metric.name}_total")
    return names


PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "histogram_quantile",
    "ignoring",
    "group_left",
    "le",
    "on",
    "without",
    "avg",
    "max",
    "min",
    "count",
    "increase",
    "irate",
}


def metric_names_in(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(
        r"\((?:le|kind|stage|code|cache|op|model|outcome|shard|instance|collection|method)"
        r"(?:\s*,\s*[a-z_]+)*\)",
        "",
        expr,
    )  # by (...) lists
    return {w for w in re.findall(r"\b[a-z_][a-z0-9_]*\b", expr) if w not in PROMQL_WORDS}


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "semsearch.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_used_exists(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    assert exprs
    known = registry_names() | TRITON_METRICS | BUILTIN_METRICS
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert used - known == set(), f"{source} use metrics nobody exports: {sorted(used - known)}"


def test_dashboard_covers_the_required_panels() -> None:
    text = " ".join(dashboard_exprs())
    for needle in (
        "semsearch_gateway_search_duration_seconds_bucket",
        "semsearch_gateway_stage_duration_seconds_bucket",
        "semsearch_gateway_errors_total",
        "semsearch_gateway_cache_requests_total",
        "semsearch_gateway_shard_coverage_ratio",
        "semsearch_indexer_search_duration_seconds_bucket",
        "semsearch_indexer_vectors",
        "semsearch_indexer_rebuild_progress_ratio",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "semsearch_embedder_batch_size_bucket",
    ):
        assert needle in text, needle
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, kind)" in text
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
