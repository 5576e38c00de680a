"""The caller's X.509-SVID as a TLS context, rotated without a restart.

Two sources: :class:`SvidFiles` reads the certificate, key and bundle files
that spiffe-helper (or cert-manager, or ``mayfly dev``) keeps fresh, and
notices when they change; :class:`WorkloadApi` fetches the SVID from a SPIRE
agent over the SPIFFE Workload API (the optional ``spiffe`` package). Both
hand out an :class:`ssl.SSLContext` and a generation number that changes when
the SVID does, so a client knows to open new connections with it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import CredentialsError


class Credentials(Protocol):
    """Anything that can hand out the caller's current TLS context."""

    def current(self) -> tuple[ssl.SSLContext, int]:
        """The TLS context to connect with, and its generation (it changes
        when the SVID is rotated)."""
        ...


def client_context(cafile: str | None = None, cadata: str | None = None) -> ssl.SSLContext:
    """A TLS client context that trusts only the given bundle.

    The broker's certificate is an SVID: it is checked against the bundle,
    with the host name as the URL names it.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, cadata=cadata)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class _Stamp:
    """What tells a file has changed: rotation writes a new file (a new inode
    or size) or rewrites it in place (a new modification time)."""

    inode: int
    size: int
    mtime_ns: int


def _stamp(path: Path) -> _Stamp:
    st = path.stat()
    return _Stamp(st.st_ino, st.st_size, st.st_mtime_ns)


class SvidFiles:
    """An SVID from PEM files: ``cert`` (leaf first, maybe intermediates),
    ``key`` and ``bundle`` (the CAs the broker's certificate chains to).

    The files are checked for changes at most every ``check_interval``
    seconds when a context is asked for. A changed set that does not load (a
    rotation half-written, a key that does not match its certificate) is
    ignored and the previous context stays in use until the next check: a
    rotation never leaves the caller without a working SVID.
    """

    def __init__(
        self,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        bundle: str | os.PathLike[str],
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = (Path(cert), Path(key), Path(bundle))
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self._stamps = self._read_stamps()
        self._context = self._load()
        self._checked = clock()

    def _read_stamps(self) -> tuple[_Stamp, ...]:
        try:
            return tuple(_stamp(p) for p in self._paths)
        except OSError as e:
            raise CredentialsError(f"reading the SVID files: {e}") from e

    def _load(self) -> ssl.SSLContext:
        cert, key, bundle = self._paths
        try:
            ctx = client_context(cafile=str(bundle))
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as e:
            raise CredentialsError(f"loading the SVID from {cert} and {key}: {e}") from e
        return ctx

    @property
    def generation(self) -> int:
        return self._generation

    def current(self) -> tuple[ssl.SSLContext, int]:
        now = self._clock()
        with self._lock:
            if now - self._checked >= self._interval:
                self._checked = now
                self._reload_if_changed()
            return self._context, self._generation

    def reload(self) -> bool:
        """Check the files now (as SIGHUP would); True when a new SVID loaded."""
        with self._lock:
            self._checked = self._clock()
            return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        try:
            stamps = tuple(_stamp(p) for p in self._paths)
        except OSError:
            return False  # a file is being replaced: look again next time
        if stamps == self._stamps:
            return False
        try:
            ctx = self._load()
        except CredentialsError:
            return False  # half-written: keep the previous SVID, retry
        self._stamps = stamps
        self._context = ctx
        self._generation += 1
        return True


class WorkloadApi:
    """An SVID from a SPIRE agent over the SPIFFE Workload API.

    Needs the ``spiffe`` package (``pip install 'mayfly[spire]'``). The
    socket is ``socket_path`` or ``SPIFFE_ENDPOINT_SOCKET``. The SVID and
    bundles are streamed by the agent; each new one becomes a new context.
    Python's ``ssl`` loads keys only from files: the key is written to an
    anonymous in-memory file (``memfd``) where the platform has one, else to a
    private temporary file removed at once.
    """

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10.0) -> None:
        try:
            from spiffe import X509Source
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise CredentialsError(
                "the Workload API needs the spiffe package: pip install 'mayfly[spire]'"
            ) from e
        self._lock = threading.Lock()
        self._generation = 0
        self._seen: bytes | None = None
        self._context: ssl.SSLContext | None = None
        try:
            self._source: Any = X509Source(socket_path=socket_path, timeout_in_seconds=timeout)
        except Exception as e:  # the spiffe package raises its own hierarchy
            raise CredentialsError(f"fetching the SVID from the Workload API: {e}") from e

    def close(self) -> None:
        self._source.close()

    def current(self) -> tuple[ssl.SSLContext, int]:
        from cryptography.hazmat.primitives import serialization

        # One snapshot: the SVID and the bundles of the same update.
        context = self._source.get_x509_context()
        svid = context.default_svid
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
        with self._lock:
            if self._context is None or chain != self._seen:
                key = svid.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
                if bundle is None:
                    raise CredentialsError("the Workload API sent no bundle for the SVID's trust domain")
                cadata = "".join(
                    a.public_bytes(serialization.Encoding.PEM).decode() for a in bundle.x509_authorities
                )
                ctx = client_context(cadata=cadata)
                _load_chain_from_memory(ctx, chain, key)
                self._context, self._seen = ctx, chain
                self._generation += 1
            return self._context, self._generation


def _load_chain_from_memory(ctx: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fds = [memfd("mayfly-svid"), memfd("mayfly-key")]
        try:
            for fd, data in zip(fds, (chain, key), strict=True):
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="mayfly-") as d:  # mode 0700
        cert_path, key_path = Path(d, "svid.pem"), Path(d, "key.pem")
        cert_path.write_bytes(chain)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        ctx.load_cert_chain(str(cert_path), str(key_path))
