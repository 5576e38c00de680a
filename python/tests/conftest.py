"""The real broker for the Python tests: ``mayfly dev`` (SQLite) and ``mayfly
serve`` (PostgreSQL), each started as a process on free local ports, and the
``mayfly`` CLI for what a security team does (approve, deny, audit).

``MAYFLY_BIN`` names the binary (default: ``target/debug/mayfly``, which
``cargo test`` builds); ``DATABASE_URL`` the PostgreSQL server (default:
``postgres://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from mayfly import Agent, Orchestrator, Scope, SvidFiles, Task

REPO = Path(__file__).resolve().parents[2]
MAYFLY = Path(os.environ.get("MAYFLY_BIN", str(REPO / "target" / "debug" / "mayfly")))
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
TRUST_DOMAIN = "example.org"
AGENT = f"spiffe://{TRUST_DOMAIN}/agent/support-eu-1"
SUB_AGENT = f"spiffe://{TRUST_DOMAIN}/agent/support-eu-2"
FINANCE_AGENT = f"spiffe://{TRUST_DOMAIN}/agent/finance-1"
#: How long a broker may take to become ready.
START_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Broker:
    """A running broker process and the dev identities' certificates."""

    def __init__(self, backend: str, root: Path, argv: list[str], grpc: int, http: int) -> None:
        self.backend = backend
        self.root = root
        self.certs = root / "certs"
        self.url = f"https://127.0.0.1:{grpc}"
        self.http_url = f"http://127.0.0.1:{http}"
        self.grpc_port, self.http_port = grpc, http
        self._argv = argv
        self._log = root / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(self._argv, cwd=self.root, stdout=log, stderr=log)
        deadline = time.monotonic() + START_SECONDS
        while not _ready(self.http_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open and go silent."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def svid(self, name: str, **kw: Any) -> SvidFiles:
        """A dev identity's SVID (``agent``, ``orchestrator``, ``verifier``, …)."""
        return SvidFiles(self.certs / f"{name}.crt", self.certs / f"{name}.key", self.certs / "ca.pem", **kw)

    def cli(self, *args: str, identity: str = "admin") -> Any:
        """A ``mayfly`` client command as ``identity``; its JSON output."""
        argv = [
            str(MAYFLY),
            "--broker",
            self.url,
            "--ca",
            str(self.certs / "ca.pem"),
            "--cert",
            str(self.certs / f"{identity}.crt"),
            "--key",
            str(self.certs / f"{identity}.key"),
            "--output",
            "json",
            *args,
        ]
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise AssertionError(f"mayfly {' '.join(args)}: exit {done.returncode}: {done.stderr.decode()}")
        return json.loads(done.stdout) if done.stdout.strip() else None


def _database(name: str) -> str:
    u = urlsplit(DATABASE_URL)
    return urlunsplit((u.scheme, u.netloc, f"/{name}", u.query, ""))


def _psql(sql: str) -> None:
    subprocess.run(["psql", DATABASE_URL, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, timeout=60)


#: Added to the example policies: the payments workflow's step-up action at
#: any hour (the example allows minting only 06:00-20:00 UTC).
ANY_HOUR = """
@id("python-tests-payments")
@reason("the Python tests mint payments tokens at any hour")
permit (principal, action == Mayfly::Action::"Mint", resource in Mayfly::Tool::"payments-api")
when {
  context.workflow == Mayfly::Workflow::"payments" &&
  principal.path like "/agent/finance-*" &&
  ["read", "pay"].contains(context.action)
};
"""


def policies(root: Path) -> None:
    """The example policies (what ``mayfly dev`` ships), plus :data:`ANY_HOUR`."""
    shutil.copytree(REPO / "examples" / "policies", root / "policies")
    (root / "policies" / "python-tests.cedar").write_text(ANY_HOUR)


def start_dev(root: Path) -> Broker:
    grpc, http = free_port(), free_port()
    policies(root)  # dev keeps a policy directory it finds
    argv = [str(MAYFLY), "dev", "--dir", str(root), "--grpc-addr", f"127.0.0.1:{grpc}"]
    argv += ["--http-addr", f"127.0.0.1:{http}"]
    return Broker("sqlite", root, argv, grpc, http)


def start_serve(root: Path, db: str, heartbeat: str = "1s") -> Broker:
    grpc, http = free_port(), free_port()
    subprocess.run([str(MAYFLY), "dev-certs", str(root / "certs")], check=True, capture_output=True)
    policies(root)
    (root / "mayfly.toml").write_text(
        f"""
[server]
grpc_addr = "127.0.0.1:{grpc}"
http_addr = "127.0.0.1:{http}"
cert = "certs/broker.crt"
key = "certs/broker.key"
issuer = "https://127.0.0.1:{grpc}"

[database]
url = "{_database(db)}"

[[trust_domains]]
name = "{TRUST_DOMAIN}"
bundle = "certs/ca.pem"

[roles]
agent = ["spiffe://{TRUST_DOMAIN}/agent/*"]
orchestrator = ["spiffe://{TRUST_DOMAIN}/orchestrator/*"]
admin = ["spiffe://{TRUST_DOMAIN}/admin/*"]
verifier = ["spiffe://{TRUST_DOMAIN}/verifier/*"]

[oauth]
poll_interval = "1s"

[revocation]
heartbeat = "{heartbeat}"

[policy]
dir = "policies"
environment = "prod-eu"
"""
    )
    argv = [str(MAYFLY), "serve", "--config", str(root / "mayfly.toml")]
    return Broker("postgres", root, argv, grpc, http)


@pytest.fixture(scope="session")
def _binary() -> Path:
    if not MAYFLY.exists():
        pytest.fail(f"{MAYFLY} is missing: build it (cargo build) or set MAYFLY_BIN")
    return MAYFLY


@contextlib.contextmanager
def running(backend: str, root: Path) -> Iterator[Broker]:
    """A broker on ``backend`` in ``root`` for the block, stopped (and its
    PostgreSQL database dropped) after it."""
    db = f"mayfly_py_{uuid.uuid4().hex[:12]}"
    if backend == "postgres":
        _psql(f"CREATE DATABASE {db}")
    try:
        b = start_dev(root) if backend == "sqlite" else start_serve(root, db)
        try:
            yield b
        finally:
            if b.proc is not None and b.proc.poll() is None:
                b.resume()
            b.stop()
    finally:
        if backend == "postgres":
            _psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _binary: Path
) -> Iterator[Broker]:
    """One broker per backend for the session; each test opens its own tasks."""
    with running(request.param, tmp_path_factory.mktemp(request.param)) as b:
        yield b


@pytest.fixture()
def own_broker(tmp_path: Path, _binary: Path) -> Iterator[Broker]:
    """A broker of the test's own (PostgreSQL), for tests that stop or pause it."""
    with running("postgres", tmp_path) as b:
        yield b


SUPPORT = "support-triage"
CRM_EU = Scope("crm-api", "customers/eu/*", "read")


@pytest.fixture()
def orchestrator(broker: Broker) -> Iterator[Orchestrator]:
    with Orchestrator(broker.url, broker.svid("orchestrator")) as o:
        yield o


@pytest.fixture()
def agent(broker: Broker) -> Iterator[Agent]:
    with Agent(broker.url, broker.svid("agent")) as a:
        yield a


@pytest.fixture()
def support_task(orchestrator: Orchestrator) -> Task:
    """An active support-triage task for the dev agent, reading EU customers."""
    return orchestrator.open_task(AGENT, SUPPORT, "answer ticket 4713", [CRM_EU], duration=600)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio."""
    return "asyncio"
