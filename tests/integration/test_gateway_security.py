"""API keys on every RPC, TLS with probes, SDK and CLI, settings that must stop the gateway, and a
shard list in the wrong order."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from semsearch.client import Item, SemsearchClient
from semsearch.procs import free_port
from semsearch.rpc import health_serving
from semsearch.tools.stack import GATEWAY_SERVICE, Stack
from tests.conftest import create_demo_collections

pytestmark = pytest.mark.integration

KEY = "integration-test-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=semsearch-test-ca")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
        str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory, tls):
    _ca, cert, key = tls
    env = {"SEMSEARCH_API_KEYS": KEY, "SEMSEARCH_TLS_CERT": str(cert), "SEMSEARCH_TLS_KEY": str(key)}
    home = tmp_path_factory.mktemp("secure") / "stack"
    with Stack(home, model_repository, num_shards=2, env=env).start() as stack:
        with SemsearchClient(stack.gateway_address, api_key=KEY, tls_ca=tls[0]) as client:
            create_demo_collections(client)
        yield stack


def raw_call(channel: grpc.Channel, method: str, streaming: bool, metadata=()) -> grpc.StatusCode:
    """Call `method` with bytes that are not a valid request; the status says whether the body was
    parsed (INTERNAL) or refused before (UNAUTHENTICATED)."""
    garbage = b"\xff\xff\xff\xff not a protobuf"
    try:
        if streaming:
            call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
            list(call(iter([garbage]), timeout=10, metadata=metadata))
        else:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            call(garbage, timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_rpc_needs_the_key_before_its_body_is_read(stack, tls):
    ca, _, _ = tls
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    methods = ["Search", "Upsert", "UpsertStream", "Delete", "Get", "ListCollections"]
    with grpc.secure_channel(stack.gateway_address, credentials) as channel:
        for method in methods:
            path = f"/semsearch.v1.Search/{method}"
            streaming = method == "UpsertStream"
            assert raw_call(channel, path, streaming) == grpc.StatusCode.UNAUTHENTICATED, method
            assert raw_call(channel, path, streaming, (("x-api-key", "wrong-" + KEY),)) == (
                grpc.StatusCode.UNAUTHENTICATED
            ), method
            # With the key the garbage body is parsed, and refused as such.
            assert (
                raw_call(channel, path, streaming, (("x-api-key", KEY),)) != grpc.StatusCode.UNAUTHENTICATED
            )
        # Invented method names never become metric labels.
        for i in range(20):
            raw_call(channel, f"/semsearch.v1.Search/Invented{i}", False)
    body = urllib.request.urlopen(f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics", timeout=5).read()
    assert b"Invented" not in body
    assert b'method="unknown"' in body


def test_tls_works_for_the_sdk_the_cli_and_the_probes(stack, tls):
    ca, _, _ = tls
    with SemsearchClient(stack.gateway_address, api_key=KEY, tls_ca=ca) as client:
        assert client.upsert("texts", [Item(id="tls-1", vector=np.ones(384))]).succeeded == 1
        assert client.search("texts", vector=np.ones(384), k=1).hits[0].id == "tls-1"
        for method in (
            lambda: client.get("texts", ["tls-1"]),
            lambda: client.delete("texts", ["nothing-here"]),
            lambda: list(client.upsert_stream("texts", [[Item(id="tls-2", vector=np.ones(384))]])),
            client.collections,
        ):
            method()
    with SemsearchClient(stack.gateway_address, api_key=KEY) as plaintext:
        with pytest.raises(grpc.RpcError) as info:
            plaintext.collections()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    cli = subprocess.run(
        [sys.executable, "-m", "semsearch", "search", "--collection", "texts", "--id", "tls-1", "-k", "1",
         "--gateway", stack.gateway_address, "--api-key", KEY, "--tls-ca", str(ca), "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    # Probes: the plaintext health-only port answers liveness and readiness.
    health = f"127.0.0.1:{stack.gateway_health_port}"
    assert health_serving(health) and health_serving(health, GATEWAY_SERVICE)


def gateway_exit(env_overrides: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    env = dict(os.environ)
    env.update(
        SEMSEARCH_SHARDS="127.0.0.1:1",
        SEMSEARCH_TRITON_URL="127.0.0.1:1",
        SEMSEARCH_REDIS_URL="redis://127.0.0.1:1/0",
        SEMSEARCH_GATEWAY_PORT=str(free_port()),
        SEMSEARCH_GATEWAY_METRICS_PORT=str(free_port()),
    )
    env.update(env_overrides)
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=ROOT,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEMSEARCH_API_KEYS": " , "}, "lists no key"),
        ({"SEMSEARCH_API_KEYS": "change-me"}, "example key"),
        ({"SEMSEARCH_API_KEYS": "short"}, "at least 16"),
        ({"SEMSEARCH_TLS_CERT": "/tmp/cert.pem"}, "needs both"),
        ({"SEMSEARCH_TLS_KEY": "/tmp/key.pem"}, "needs both"),
    ],
)
def test_settings_that_would_weaken_security_stop_the_gateway(env, message):
    code, output = gateway_exit(env)
    assert code != 0 and message in output, output


def test_a_misordered_shard_list_stops_the_gateway(stack):
    reversed_shards = ",".join(s.address for s in reversed(stack.shards))
    code, output = gateway_exit({"SEMSEARCH_SHARDS": reversed_shards})
    assert code != 0 and "SEMSEARCH_SHARDS is wrong" in output and "shard 0 of 2" in output, output


def test_liveness_stays_while_readiness_follows_the_shards(stack):
    health = f"127.0.0.1:{stack.gateway_health_port}"
    for shard in stack.shards:
        shard.kill()
    try:
        deadline = time.monotonic() + 10
        while health_serving(health, GATEWAY_SERVICE) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not health_serving(health, GATEWAY_SERVICE)
        assert health_serving(health)  # the process works: no restart wanted
    finally:
        stack.start_shards()
    deadline = time.monotonic() + 15
    while not health_serving(health, GATEWAY_SERVICE) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health_serving(health, GATEWAY_SERVICE)
