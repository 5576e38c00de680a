"""The SVID from the SPIFFE Workload API (the ``spiffe`` package's client).

No SPIRE agent runs here: a Workload API endpoint on a Unix socket stands in
for it, speaking the real protocol (``SpiffeWorkloadAPI.FetchX509SVID``, the
``workload.spiffe.io`` header, DER SVIDs, PKCS#8 keys and bundles, streamed
updates), and hands out the dev SVIDs the broker trusts.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from mayfly import Agent, Task, WorkloadApi

from .conftest import AGENT, SUB_AGENT, Broker
from .test_agent import claims, thumbprint


def _svid(broker: Broker, name: str, spiffe_id: str) -> Any:
    cert = x509.load_pem_x509_certificate((broker.certs / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((broker.certs / f"{name}.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((broker.certs / "ca.pem").read_bytes())
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=spiffe_id,
                x509_svid=cert.public_bytes(serialization.Encoding.DER),
                x509_svid_key=key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                bundle=ca.public_bytes(serialization.Encoding.DER),
            )
        ]
    )


class _Agent(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self) -> None:
        self.updates: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()

    def FetchX509SVID(self, request: Any, context: Any) -> Iterator[Any]:
        if dict(context.invocation_metadata()).get("workload.spiffe.io") != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        while not self.stop.is_set() and context.is_active():
            try:
                yield self.updates.get(timeout=0.1)
            except queue.Empty:
                continue


@pytest.fixture()
def workload_api(tmp_path: Path) -> Iterator[tuple[_Agent, str]]:
    agent = _Agent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(agent, server)  # type: ignore[no-untyped-call]
    socket = tmp_path / "agent.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield agent, f"unix://{socket}"
    finally:
        agent.stop.set()
        server.stop(grace=None)


def test_the_svid_comes_from_the_workload_api_and_its_rotation_is_picked_up(
    broker: Broker, workload_api: tuple[_Agent, str], support_task: Task
) -> None:
    agent, socket = workload_api
    agent.updates.put(_svid(broker, "sub-agent", SUB_AGENT))
    source = WorkloadApi(socket, timeout=10)
    try:
        _, first = source.current()
        with Agent(broker.url, source) as a:
            with pytest.raises(Exception, match="invalid_grant"):  # the task is support-eu-1's
                a.mint(support_task.id, "crm-api", "customers/eu/42", "read")
            agent.updates.put(_svid(broker, "agent", AGENT))
            for _ in range(100):  # the update is streamed: at most 10 s
                if source.current()[1] != first:
                    break
                threading.Event().wait(0.1)
            t = a.mint(support_task.id, "crm-api", "customers/eu/42", "read")
            assert claims(t)["cnf"] == {"x5t#S256": thumbprint((broker.certs / "agent.crt").read_bytes())}
    finally:
        source.close()
