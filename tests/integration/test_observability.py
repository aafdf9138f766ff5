"""Local observability: live /metrics pass promtool, and a real Prometheus scraping the local stack
answers the dashboard's p99 latency query with a number and loads the alert rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from semsearch.client import Item, SemsearchClient
from semsearch.tools.stack import Stack
from tests.conftest import create_demo_collections

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def dashboard_p99_query() -> str:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "semsearch.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if (
                "histogram_quantile(0.99" in expr
                and "semsearch_gateway_search_duration_seconds_bucket" in expr
            ):
                return expr.replace("$__rate_interval", "1m")
    raise AssertionError("the dashboard has no p99 search latency query")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def observed_stack(model_repository, tmp_path):
    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        pytest.fail("promtool/prometheus missing: scripts/setup.sh installs the Debian package prometheus")
    with Stack(tmp_path / "stack", model_repository, num_shards=1, with_prometheus=True).start() as stack:
        with SemsearchClient(stack.gateway_address) as client:
            create_demo_collections(client)
        yield stack


def test_live_metrics_and_dashboard_query(observed_stack):
    stack = observed_stack
    with SemsearchClient(stack.gateway_address) as client:
        client.upsert("texts", [Item(id=f"t{i}", text=f"observability sample number {i}") for i in range(20)])
        for i in range(30):
            client.search("texts", text=f"sample {i % 5}", k=3)

    for url in (
        f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics",
        f"http://127.0.0.1:{stack.shards[0].metrics_port}/metrics",
    ):
        body = urllib.request.urlopen(url, timeout=5).read()
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert check.returncode == 0, (url, check.stdout.decode(), check.stderr.decode())

    query = dashboard_p99_query()
    deadline = time.monotonic() + 60
    value = None
    while time.monotonic() < deadline:
        with SemsearchClient(stack.gateway_address) as client:
            client.search("texts", text="keep the rate alive", k=3, no_cache=True)
        data = get_json(f"{stack.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
        results = data["data"]["result"]
        if results and results[0]["value"][1] not in ("NaN", "+Inf"):
            value = float(results[0]["value"][1])
            break
        time.sleep(1)
    assert value is not None and value > 0, "Prometheus never answered the dashboard's p99 query"

    rules = get_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
    assert rules and sum(len(g["rules"]) for g in rules) >= 5
    targets = get_json(f"{stack.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"semsearch-gateway", "semsearch-indexer", "triton"}
    assert all(t["health"] == "up" for t in targets), [(t["labels"]["job"], t["lastError"]) for t in targets]
