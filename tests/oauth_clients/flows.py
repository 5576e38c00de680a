"""The OAuth front door driven by stock clients: Authlib's OAuth2Client (on
httpx) for the grants, RFC 7009 and errors, and plain httpx for metadata,
introspection and step-up polling. Started by tests/api/oauth_clients.rs with a
JSON description of the broker and the certificates; prints one JSON object
per line: each step's outcome, `{"pending": <device_code>}` when it waits for
the test to decide an approval, and `{"done": true}` at the end."""

import json
import ssl
import sys
import time
import warnings
from typing import Any

import httpx

warnings.filterwarnings("ignore")  # Authlib's notice about httpx2
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
OFFER = "urn:mayfly:params:oauth:token-type:delegation-offer"


def say(**kv: Any) -> None:
    print(json.dumps(kv), flush=True)


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    base, ca, certs = cfg["base"], cfg["ca"], cfg["certs"]

    def tls(who: str | None = None) -> ssl.SSLContext:
        # httpx 0.28's way to present a client certificate: an SSL context.
        ctx = ssl.create_default_context(cafile=ca)
        if who:
            ctx.load_cert_chain(f"{certs}/{who}.crt", f"{certs}/{who}.key")
        return ctx

    def client(who: str) -> Any:
        # RFC 8705 tls_client_auth: the certificate authenticates the client;
        # Authlib sends client_id in the body ("none" adds no secret).
        return OAuth2Client(
            client_id=cfg["ids"][who],
            token_endpoint_auth_method="none",
            revocation_endpoint_auth_method="none",
            verify=tls(who),
        )

    # Discovery, without a certificate.
    meta = httpx.get(
        f"{base}/.well-known/oauth-authorization-server", verify=tls()
    ).json()
    say(step="metadata", issuer=meta["issuer"], token_endpoint=meta["token_endpoint"])
    token_url = f"{base}/oauth/token"

    agent = client("agent")
    tok = agent.fetch_token(
        token_url,
        grant_type="client_credentials",
        task_id=cfg["task"],
        audience="crm-api",
        scope="read:customers/eu/42",
        ttl_seconds=60,
    )
    say(
        step="mint",
        token_type=tok["token_type"],
        scope=tok["scope"],
        expires_in=tok["expires_in"],
    )

    verifier = httpx.Client(verify=tls("verifier"))
    active = verifier.post(
        f"{base}/oauth/introspect", data={"token": tok["access_token"]}
    ).json()
    say(
        step="introspect",
        active=active["active"],
        sub=active.get("sub"),
        cnf=active.get("cnf"),
    )

    try:
        agent.fetch_token(token_url, grant_type="password", username="a", password="b")
        say(step="password", error=None)
    except OAuthError as e:
        say(step="password", error=e.error)

    try:
        agent.fetch_token(
            token_url,
            grant_type="client_credentials",
            task_id=cfg["task"],
            audience="crm-api",
            scope="read:customers/us/1",
            ttl_seconds=60,
        )
        say(step="out_of_scope", error=None)
    except OAuthError as e:
        say(step="out_of_scope", error=e.error, description=e.description)

    # Delegation by token exchange (on a second task: the first deviated).
    tok2 = agent.fetch_token(
        token_url,
        grant_type="client_credentials",
        task_id=cfg["task2"],
        audience="crm-api",
        scope="read:customers/eu/42",
        ttl_seconds=120,
    )
    offer = agent.fetch_token(
        token_url,
        grant_type=EXCHANGE,
        subject_token=tok2["access_token"],
        subject_token_type=ACCESS,
        requested_token_type=OFFER,
        sub_agent=cfg["ids"]["helper"],
        audience="crm-api",
        scope="read:customers/eu/42",
        ttl_seconds=60,
    )
    say(
        step="offer",
        issued_token_type=offer["issued_token_type"],
        token_type=offer["token_type"],
    )
    try:
        agent.fetch_token(
            token_url,
            grant_type=EXCHANGE,
            subject_token=tok2["access_token"],
            subject_token_type=ACCESS,
            requested_token_type=OFFER,
            sub_agent=cfg["ids"]["helper"],
            audience="crm-api",
            scope="read:customers/eu/*",
            ttl_seconds=60,
        )
        say(step="widen", error=None)
    except OAuthError as e:
        say(step="widen", error=e.error)
    child = client("helper").fetch_token(
        token_url,
        grant_type=EXCHANGE,
        subject_token=offer["access_token"],
        subject_token_type=OFFER,
    )
    claims = verifier.post(
        f"{base}/oauth/introspect", data={"token": child["access_token"]}
    ).json()
    say(
        step="redeem",
        active=claims["active"],
        act=claims.get("act"),
        sub=claims.get("sub"),
    )

    # RFC 7009: the agent gives its token back.
    agent.revoke_token(f"{base}/oauth/revoke", token=tok2["access_token"])
    after = verifier.post(
        f"{base}/oauth/introspect", data={"token": tok2["access_token"]}
    ).json()
    say(step="revoke", active=after["active"])

    # Step-up, polled as RFC 8628 says: every `interval`, slower on slow_down.
    for outcome in ("approve", "deny"):
        with httpx.Client(verify=tls("agent")) as h:
            r = h.post(
                token_url,
                data={
                    "grant_type": "client_credentials",
                    "task_id": cfg["step_up_task"],
                    "audience": "tickets",
                    "scope": "delete:tickets/4711",
                    "ttl_seconds": "60",
                },
            )
            pending = r.json()
            code, interval = pending["device_code"], pending["interval"]
            say(
                pending=code,
                outcome=outcome,
                error=pending["error"],
                status=r.status_code,
            )
            polls, slowed = 0, 0
            while True:
                time.sleep(interval)
                r = h.post(token_url, data={"grant_type": DEVICE, "device_code": code})
                polls += 1
                body = r.json()
                if r.status_code == 200:
                    say(
                        step="step_up",
                        outcome=outcome,
                        token_type=body["token_type"],
                        scope=body["scope"],
                        polls=polls,
                        slowed=slowed,
                    )
                    break
                if body["error"] == "authorization_pending":
                    continue
                if body["error"] == "slow_down":
                    slowed += 1
                    interval = body["interval"]
                    continue
                say(
                    step="step_up",
                    outcome=outcome,
                    error=body["error"],
                    polls=polls,
                    slowed=slowed,
                )
                break
    say(done=True)


if __name__ == "__main__":
    main()
