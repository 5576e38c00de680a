"""How many local checks of a valid token one core makes, with 1,000 entries in
the revocation set: no network, a key of its own, the real check.

    .venv/bin/python python/bench/verifier_bench.py [--seconds 5] [--entries 1000]

Target: at least 5,000 checks/s. Two figures: a token presented again (as an
agent does, for minutes), whose verified signature the checker remembers; and
every check verifying the Ed25519 signature, bounded by the Ed25519 verify
itself (printed last, for the machine at hand).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey

from mayfly.verifier import Checker, RequiredScope, VerifierConfig

ISS, AUD, AGENT = "https://mayfly.bench", "crm-api", "spiffe://example.org/agent/support-eu-1"
KINDS = ("token", "task", "agent", "workflow")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(key: Ed25519PrivateKey, cert: bytes) -> str:
    now = int(time.time())
    claims = {
        "iss": ISS, "sub": AGENT, "aud": AUD, "exp": now + 300, "iat": now, "nbf": now,
        "jti": "4f1c2a52-1d0e-4a8e-9c55-6a1f7e0b9d11", "scope": "read:customers/eu/*",
        "task": "7b0e4d8a-2f6c-4c1e-8d3b-5e9a1c7f2b60", "wf": "support-triage",
        "cnf": {"x5t#S256": b64(hashlib.sha256(cert).digest())}, "client_id": AGENT,
    }  # fmt: skip
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "bench-1"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def checker(key: Ed25519PrivateKey, entries: int, remembered: int) -> Checker:
    keys = {"bench-1": VerifyKey(key.public_key().public_bytes_raw())}
    c = Checker(ISS, AUD, keys, config=VerifierConfig(remembered_tokens=remembered))
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rng = random.Random(7)
    for seq in range(1, entries + 1):
        kind = KINDS[seq % len(KINDS)]
        target = {kind: f"{kind}-{rng.getrandbits(64):016x}"}
        c.feed("revocation", json.dumps({"sequence": seq, "target": target, "at": at}))
    c.feed("heartbeat", json.dumps({"head": entries, "at": at}))
    assert len(c.state.revocations) == entries
    return c


def rate(c: Checker, t: str, cert: bytes, seconds: float) -> tuple[float, int]:
    """Checks per second of ``t`` for ``seconds``, and how many were made."""
    need = RequiredScope("read", "customers/eu/42")
    c.check(t, cert, need)  # valid, or this raises
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            c.check(t, cert, need)
        n += 100
    return n / (time.perf_counter() - start), n


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--entries", type=int, default=1000, help="revocation set size")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, whatever the machine has
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    key, cert = Ed25519PrivateKey.generate(), b"the DER of the agent's certificate" * 20
    t = token(key, cert)
    for what, remembered in [
        ("the same token again (signature remembered)", 4096),
        ("signature verified every check", 0),
    ]:
        per_s, n = rate(checker(key, args.entries, remembered), t, cert, args.seconds)
        print(
            f"{per_s:>9,.0f} checks/s  {what}: {n} valid checks, {args.entries} revocation entries, one core"
        )
    msg = t.encode()
    sig = key.sign(msg)
    libsodium = VerifyKey(key.public_key().public_bytes_raw())
    public = key.public_key()

    def sodium() -> None:
        libsodium.verify(msg, sig)

    def openssl() -> None:
        public.verify(sig, msg)

    bounds: list[tuple[str, Callable[[], None]]] = [
        ("libsodium (PyNaCl), what the checker uses: the bound of the second", sodium),
        ("OpenSSL (cryptography), for comparison", openssl),
    ]
    for name, verify in bounds:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            verify()
            n += 1
        print(f"{n / (time.perf_counter() - start):>9,.0f} verifies/s  Ed25519 alone, {name}")


if __name__ == "__main__":
    main()
