"""uvicorn with mutual TLS that tells the app which client certificate each
request came with.

uvicorn (checked up to 0.54) does not fill the ASGI TLS extension, so an ASGI
app cannot see the client certificate, and a certificate-bound token cannot be
checked. :class:`MtlsH11Protocol` reads the peer certificate when a TLS
connection is made and puts it in every request scope of that connection as
``extensions.tls.client_cert_chain = [pem]``, which :mod:`mayfly.asgi` reads.
It works because uvicorn's ``H11Protocol`` starts each request with
``self.app``, set per connection.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .asgi import ASGIApp, Receive, Scope, Send


def with_client_cert(app: ASGIApp, pem: str) -> ASGIApp:
    """``app``, with ``pem`` as the client certificate of every request."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope)
        extensions = dict(scope.get("extensions") or {})
        tls = dict(extensions.get("tls") or {})
        tls["client_cert_chain"] = [pem]
        extensions["tls"] = tls
        scope["extensions"] = extensions
        await app(scope, receive, send)

    return wrapped


class MtlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, filling the ASGI TLS extension's client
    certificate from the connection's TLS session."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: Any = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = with_client_cert(self.app, ssl.DER_cert_to_PEM_cert(der))


def config(
    app: ASGIApp,
    *,
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8443,
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED,
    **kwargs: Any,
) -> uvicorn.Config:
    """A uvicorn configuration serving ``app`` over TLS with the server's
    ``cert``/``key``, client certificates required and checked against
    ``bundle``, and :class:`MtlsH11Protocol`. ``cert_reqs=ssl.CERT_OPTIONAL``
    lets a client without a certificate read the metadata (and nothing else:
    :class:`~mayfly.asgi.MayflyAuth` refuses its tokens)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_ca_certs=bundle,
        ssl_cert_reqs=int(cert_reqs),
        http=MtlsH11Protocol,
        **kwargs,
    )


def serve(
    app: ASGIApp,
    host: str,
    port: int,
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    **kwargs: Any,
) -> None:
    """Runs ``app`` with :func:`config` until interrupted."""
    uvicorn.Server(config(app, cert=cert, key=key, bundle=bundle, host=host, port=port, **kwargs)).run()


__all__ = ["MtlsH11Protocol", "config", "serve", "with_client_cert"]
