//! The OAuth front door over real mTLS: metadata, minting with
//! `client_credentials`, introspection (RFC 7662), revocation (RFC 7009), every
//! error code, and bad input answered with the RFC error and nothing stored.
use crate::support::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// The token's claims, checked with an implementation that is not Mayfly's.
async fn verified_claims(app: &TestApp, token: &str) -> Value {
    let (_, jwks) = http_get(app.http, "/.well-known/jwks.json").await;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let kid = decode_header(token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["crm-api"]);
    v.set_issuer(&["https://mayfly.test"]);
    decode::<Value>(token, &key, &v).unwrap().claims
}

#[tokio::test]
async fn metadata_and_keys_are_public_and_name_every_endpoint() {
    let app = spawn_app().await;
    let anon = app.oauth_anonymous();
    let r = anon.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = r.json();
    assert_eq!(m["issuer"], "https://mayfly.test");
    for (k, path) in [
        ("token_endpoint", "/oauth/token"),
        ("introspection_endpoint", "/oauth/introspect"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("jwks_uri", "/.well-known/jwks.json"),
        ("mayfly_revocation_feed_endpoint", "/oauth/revocations"),
    ] {
        assert_eq!(m[k], format!("https://mayfly.test{path}"), "{k}");
    }
    assert_eq!(m["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        serde_json::json!(["tls_client_auth"])
    );
    let grants = m["grant_types_supported"].as_array().unwrap();
    for g in [
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:ietf:params:oauth:grant-type:device_code",
    ] {
        assert!(grants.iter().any(|x| x == g), "{g}");
    }
    let keys = app.oauth_anonymous().get("/.well-known/jwks.json").await;
    assert_eq!(keys.status, 200);
    assert!(!keys.json()["keys"].as_array().unwrap().is_empty());

    // Without a certificate, nothing else: refused on its headers, as
    // invalid_client (RFC 6749 §5.2), and nothing recorded.
    let before = app.stored().await;
    for path in ["/oauth/token", "/oauth/introspect", "/oauth/revoke"] {
        let r = app
            .oauth_anonymous()
            .form(path, "grant_type=client_credentials&token=x")
            .await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "invalid_client"),
            "{path}"
        );
    }
    assert_eq!(app.stored().await, before);
}

#[tokio::test]
async fn an_agent_mints_a_certificate_bound_token_with_client_credentials() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, cert) = app.oauth(AGENT);
    let r = agent
        .form("/oauth/token", &mint_form(&task.id, "customers/eu/42"))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "read:customers/eu/42");
    assert_eq!(t["expires_in"], 60);
    assert_eq!(
        t["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let token = t["access_token"].as_str().unwrap();
    let c = verified_claims(&app, token).await;
    assert_eq!(c["sub"], AGENT);
    assert_eq!(c["task"], task.id.as_str());
    assert_eq!(c["scope"], "read:customers/eu/42");
    assert_eq!(
        c["cnf"]["x5t#S256"],
        mayfly::identity::thumbprint(&cert.cert_der)
    );
    // The same token as gRPC's: persisted, active, listed for the task.
    assert!(introspect_active(&app, token).await);
    assert_eq!(app.task_tokens(&task.id).await.len(), 1);

    // client_id, when sent, must be the certificate's SPIFFE ID.
    let mut body = mint_form(&task.id, "customers/eu/43");
    body.push_str("&client_id=spiffe%3A%2F%2Fexample.org%2Fagent%2Fa2");
    let r = agent.form("/oauth/token", &body).await;
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
    let mut body = mint_form(&task.id, "customers/eu/43");
    body.push_str("&client_id=spiffe%3A%2F%2Fexample.org%2Fagent%2Fa1");
    assert_eq!(agent.form("/oauth/token", &body).await.status, 200);

    // The resource parameter (RFC 8707) names the tool too, as an absolute URI.
    let r = agent
        .form(
            "/oauth/token",
            &form(&[
                ("grant_type", "client_credentials"),
                ("task_id", &task.id),
                ("resource", "crm-api"),
                ("scope", "read:customers/eu/42"),
                ("ttl_seconds", "60"),
            ]),
        )
        .await;
    assert_eq!(r.error(), "invalid_target");
}

#[tokio::test]
async fn every_refusal_is_answered_with_its_rfc_error_and_status() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, _) = app.oauth(AGENT);
    let (agent2, _) = app.oauth(AGENT2);
    let (orch, _) = app.oauth(ORCH);
    let ok = |resource: &str| mint_form(&task.id, resource);
    let cases: Vec<(OauthClient, String, u16, &str, &str)> = vec![
        (
            agent.clone(),
            "task_id=x".into(),
            400,
            "invalid_request",
            "grant_type: is required",
        ),
        (
            agent.clone(),
            "grant_type=password&username=a".into(),
            400,
            "unsupported_grant_type",
            "'password'",
        ),
        (
            orch.clone(),
            ok("customers/eu/42"),
            400,
            "unauthorized_client",
            "agent role",
        ),
        (
            agent2.clone(),
            ok("customers/eu/42"),
            400,
            "invalid_grant",
            "belongs to another agent",
        ),
        (
            agent.clone(),
            form(&[
                ("grant_type", "client_credentials"),
                ("task_id", "not-a-task"),
                ("audience", "crm-api"),
                ("scope", "read:x"),
                ("ttl_seconds", "60"),
            ]),
            400,
            "invalid_request",
            "task_id",
        ),
        (
            agent.clone(),
            form(&[
                ("grant_type", "client_credentials"),
                ("task_id", &task.id),
                ("audience", "crm-api"),
                ("scope", "read:x"),
                ("ttl_seconds", "0"),
            ]),
            400,
            "invalid_request",
            "ttl_seconds",
        ),
        (
            agent.clone(),
            form(&[
                ("grant_type", "client_credentials"),
                ("task_id", &task.id),
                ("audience", "crm-api"),
                ("scope", "read:a write:b"),
                ("ttl_seconds", "60"),
            ]),
            400,
            "invalid_scope",
            "exactly one",
        ),
        (
            agent.clone(),
            form(&[
                ("grant_type", "client_credentials"),
                ("task_id", &task.id),
                ("scope", "read:a"),
                ("ttl_seconds", "60"),
            ]),
            400,
            "invalid_target",
            "audience: is required",
        ),
    ];
    for (client, body, status, code, says) in cases {
        let r = client.form("/oauth/token", &body).await;
        let j = r.json();
        assert_eq!(
            (r.status, r.error().as_str()),
            (status, code),
            "{body}: {j}"
        );
        let d = j["error_description"].as_str().unwrap();
        assert!(d.contains(says), "{body}: {d}");
    }
    // Nothing was minted by any of them, and the task is still active.
    assert!(app.task_tokens(&task.id).await.is_empty());
    assert_eq!(app.get_task(&task.id).await.state, 1);

    // A scope outside the task is a deviation, answered invalid_scope: the
    // task is now deviated, as on gRPC.
    let r = agent
        .form(
            "/oauth/token",
            &form(&[
                ("grant_type", "client_credentials"),
                ("task_id", &task.id),
                ("audience", "crm-api"),
                ("scope", "read:customers/us/1"),
                ("ttl_seconds", "60"),
            ]),
        )
        .await;
    assert_eq!(r.error(), "invalid_scope");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("deviat")
    );
    assert_eq!(app.get_task(&task.id).await.state, 4, "deviated");
    // And a closed task is an invalid grant.
    let r = agent.form("/oauth/token", &ok("customers/eu/42")).await;
    assert_eq!(r.error(), "invalid_grant");
}

#[tokio::test]
async fn bad_input_gets_the_rfc_error_and_stores_nothing() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, _) = app.oauth(AGENT);
    let before = app.stored().await;
    // Repeated parameters (RFC 6749 §3.2).
    let mut twice = mint_form(&task.id, "customers/eu/42");
    twice.push_str("&scope=read%3Acustomers%2Feu%2F43");
    let r = agent.form("/oauth/token", &twice).await;
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("'scope' is repeated")
    );
    // Not a form.
    let r = agent
        .send(
            "POST",
            "/oauth/token",
            &[("content-type", "application/json")],
            br#"{"grant_type":"client_credentials"}"#.to_vec(),
        )
        .await;
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("Content-Type")
    );
    // Over the body limit (limits.token_message_bytes, 16 KiB): refused unread.
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(64 * 1024)
    );
    let r = agent.form("/oauth/token", &big).await;
    assert_eq!((r.status, r.error().as_str()), (413, "invalid_request"));
    // Garbage tokens: inactive on introspection, and nothing to revoke.
    let (verifier, _) = app.oauth(VERIFIER);
    for garbage in ["x", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", &"A".repeat(4000)] {
        let r = verifier
            .form("/oauth/introspect", &form(&[("token", garbage)]))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), serde_json::json!({"active": false}));
        let r = agent
            .form("/oauth/revoke", &form(&[("token", garbage)]))
            .await;
        assert_eq!(
            r.status, 200,
            "RFC 7009 §2.2: an invalid token is not an error"
        );
    }
    // GET on the token endpoint is not a thing.
    assert_eq!(agent.get("/oauth/token").await.status, 405);
    // Nothing of it was stored: no token, no revocation, no audit event.
    assert_eq!(app.stored().await, before);
}

#[tokio::test]
async fn introspection_answers_verifiers_with_the_claims_and_cnf() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, cert) = app.oauth(AGENT);
    let t = agent
        .form("/oauth/token", &mint_form(&task.id, "customers/eu/42"))
        .await
        .json();
    let token = t["access_token"].as_str().unwrap();
    let (verifier, _) = app.oauth(VERIFIER);
    let r = verifier
        .form(
            "/oauth/introspect",
            &form(&[("token", token), ("token_type_hint", "access_token")]),
        )
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["active"], true);
    assert_eq!(j["sub"], AGENT);
    assert_eq!(j["client_id"], AGENT);
    assert_eq!(j["aud"], "crm-api");
    assert_eq!(j["scope"], "read:customers/eu/42");
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(
        j["cnf"]["x5t#S256"],
        mayfly::identity::thumbprint(&cert.cert_der)
    );
    // An agent may not introspect.
    let r = agent
        .form("/oauth/introspect", &form(&[("token", token)]))
        .await;
    assert_eq!(r.error(), "unauthorized_client");
    // Completed task: inactive.
    app.complete_task(&task.id).await;
    let r = verifier
        .form("/oauth/introspect", &form(&[("token", token)]))
        .await;
    assert_eq!(r.json(), serde_json::json!({"active": false}));
}

#[tokio::test]
async fn an_agent_gives_back_its_own_token_and_an_admin_revokes_any() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, _) = app.oauth(AGENT);
    let mint = |r: &str| {
        let agent = agent.clone();
        let body = mint_form(&task.id, r);
        async move {
            agent.form("/oauth/token", &body).await.json()["access_token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (mine, other) = (mint("customers/eu/1").await, mint("customers/eu/2").await);
    let mut watch = app.watch(0).await;

    // Another agent may not give it back: refused, and the token lives.
    let (agent2, _) = app.oauth(AGENT2);
    let r = agent2
        .form("/oauth/revoke", &form(&[("token", &mine)]))
        .await;
    assert_eq!((r.status, r.error().as_str()), (400, "unauthorized_client"));
    assert!(introspect_active(&app, &mine).await);

    // Its holder gives it back: revoked, on the stream, as "returned".
    let r = agent
        .form("/oauth/revoke", &form(&[("token", &mine)]))
        .await;
    assert_eq!(r.status, 200);
    assert!(!introspect_active(&app, &mine).await);
    let ev = next_events(&mut watch, 1).await;
    assert_eq!(ev[0].trigger, "returned");
    assert_eq!(ev[0].actor, AGENT);
    // Again: still 200, and nothing written (no revocation, no audit event).
    let before = app.stored().await;
    assert_eq!(
        agent
            .form("/oauth/revoke", &form(&[("token", &mine)]))
            .await
            .status,
        200
    );
    assert_eq!(app.stored().await, before);
    // A delegation offer is not revoked here, and says so.
    let r = agent
        .form(
            "/oauth/revoke",
            &form(&[("token", &uuid::Uuid::new_v4().to_string())]),
        )
        .await;
    assert_eq!(r.error(), "unsupported_token_type");

    // The security team revokes any token.
    let (admin, _) = app.oauth(ADMIN);
    let r = admin
        .form("/oauth/revoke", &form(&[("token", &other)]))
        .await;
    assert_eq!(r.status, 200);
    assert!(!introspect_active(&app, &other).await);
    let ev = next_events(&mut watch, 1).await;
    assert_eq!(
        (ev[0].trigger.as_str(), ev[0].actor.as_str()),
        ("admin", ADMIN)
    );
    // Both are in the audit trail.
    let revoked: Vec<_> = [AGENT, ADMIN]
        .iter()
        .map(|who| {
            let app = &app;
            async move { app.audit_by(who).await }
        })
        .collect();
    let mut triggers = vec![];
    for r in revoked {
        for row in r.await.into_iter().filter(|e| e.action == "revocation") {
            triggers.push(
                row.detail["trigger"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    triggers.sort();
    triggers.dedup();
    assert_eq!(triggers, ["admin", "returned"]);
}

#[tokio::test]
async fn grpc_still_works_on_the_port_it_shares_with_the_front_door() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let m = app.mint(AGENT, &task.id, "customers/eu/42", 60).await;
    assert!(!m.token.is_empty());
    // HTTP/2 clients of the front door work too.
    let id = app.pki.ca.svid(AGENT).unwrap();
    let r = oauth_h2(&app, &id, &mint_form(&task.id, "customers/eu/43")).await;
    assert_eq!(r.0, 200, "{}", r.1);
}

/// A token request over HTTP/2 (ALPN h2), as an HTTP/2 OAuth client sends it.
async fn oauth_h2(
    app: &TestApp,
    id: &mayfly::identity::devcerts::Issued,
    body: &str,
) -> (u16, String) {
    use rustls::pki_types::ServerName;
    let cfg = client_tls(&app.pki.ca, Some(id), &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("https://localhost:{}/oauth/token", app.grpc.port()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_one_public_document_per_connection() {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let cfg = client_tls(&app.pki.ca, None, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // Two requests on one keep-alive connection, and a third after a while.
    let get = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(&[&get[..], &get[..]].concat()).await.unwrap();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
}

#[tokio::test]
async fn a_path_the_port_does_not_serve_is_404_and_a_body_must_arrive_in_time() {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        Settings::new().limits(Limits {
            first_request_timeout: Some(std::time::Duration::from_secs(1)),
            ..Default::default()
        }),
    )
    .await;
    let (agent, id) = app.oauth(AGENT);
    // Never a 200 a client could read as "revoked".
    for path in ["/oauth/revoke/", "//oauth/revoke", "/oauth/revocation", "/"] {
        let r = agent.form(path, "token=x").await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (404, "invalid_request"),
            "{path}"
        );
    }
    // gRPC clients still get UNIMPLEMENTED for a method that does not exist.
    let r = agent
        .send(
            "POST",
            "/mayfly.v1.TokenService/Nope",
            &[("content-type", "application/grpc")],
            vec![],
        )
        .await;
    assert_eq!(r.header("grpc-status"), Some("12"), "{r:?}");

    // A body trickled slower than limits.first_request_timeout: 408.
    let cfg = client_tls(&app.pki.ca, Some(&id), &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        b"POST /oauth/token HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ngrant_type=",
    )
    .await
    .unwrap();
    let mut seen = vec![];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains('}') {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within"), "{text}");
}

#[tokio::test]
async fn with_the_store_down_the_front_door_fails_closed_with_503() {
    let (app, proxy, direct) =
        spawn_behind_proxy(Settings::new().connect_timeout(std::time::Duration::from_secs(2)))
            .await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, _) = app.oauth(AGENT);
    let t = agent
        .form("/oauth/token", &mint_form(&task.id, "customers/eu/1"))
        .await
        .json();
    let token = t["access_token"].as_str().unwrap().to_string();
    proxy.cut();
    let learned = std::time::Instant::now();
    while app.http_get("/readyz").await.0 != 503 {
        assert!(
            learned.elapsed() < std::time::Duration::from_secs(30),
            "never unready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // No token, never "active": 503 temporarily_unavailable, Retry-After.
    let r = agent
        .form("/oauth/token", &mint_form(&task.id, "customers/eu/2"))
        .await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "temporarily_unavailable")
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.json().get("access_token").is_none());
    let (verifier, _) = app.oauth(VERIFIER);
    let r = verifier
        .form("/oauth/introspect", &form(&[("token", &token)]))
        .await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "temporarily_unavailable")
    );
    // The metadata is served from memory meanwhile.
    let r = app
        .oauth_anonymous()
        .get("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(r.status, 200);
    proxy.restore();
    assert_eq!(tokens_stored(&direct.url).await, 1);
}

#[tokio::test]
async fn an_authenticated_http1_connection_outlives_the_header_deadline_while_idle() {
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        Settings::new().limits(Limits {
            header_read_timeout: Some(std::time::Duration::from_millis(500)),
            ..Default::default()
        }),
    )
    .await;
    let task = app.open_task(AGENT, 600).await;
    let id = app.pki.ca.svid(AGENT).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(
        &app.pki.ca,
        Some(&id),
        &[b"http/1.1"],
    )));
    let mut send = http1(app.grpc, &tls).await;
    for n in 0..2 {
        let req = hyper::Request::post("/oauth/token")
            .header("host", "localhost")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(mint_form(
                &task.id,
                &format!("customers/eu/{n}"),
            )))
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .expect("the same connection serves");
        assert_eq!(resp.status(), 200);
        let _ = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 20).await;
        // Idle past the header deadline (but not the idle one).
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    }
}
