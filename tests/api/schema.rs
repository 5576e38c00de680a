//! A schema owned by another role than the brokers': `mayfly migrate` as the owner,
//! brokers with `database.migrate = false` and row privileges only (the grants
//! deploy/README.md documents), so they cannot rewrite the audit trail.
use crate::support::*;
use mayfly::api::pb;
use mayfly::clock::ManualClock;
use mayfly::config::Config;
use sqlx::Connection;
use std::sync::Arc;

fn migrate(url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["migrate", "--database-url", url])
        .output()
        .expect("run mayfly migrate")
}

/// `url` with its user and password replaced.
fn as_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

async fn exec(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await?;
    Ok(())
}

#[tokio::test]
async fn brokers_run_on_a_schema_another_role_owns_and_migrates() {
    let db = fresh_database().await;
    let pki = Arc::new(Pki::new());
    let no_migrate = |url: &str| Settings::new().database(url).no_migrate();

    // Not migrated: a broker that must not migrate refuses, naming the fix.
    let cfg = Config::parse(&no_migrate(&db.url).render(&pki), "t").unwrap();
    let err = match mayfly::app::build(cfg, Arc::new(ManualClock::default())).await {
        Ok(_) => panic!("a broker started on an unmigrated schema"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("lacks migrations") && err.contains("mayfly migrate"),
        "{err}"
    );

    // The owner migrates; a second run finds nothing to do.
    let out = migrate(&db.url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied migration 20261122000001"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("postgres@"),
        "the user is not printed: {stdout}"
    );
    let out = migrate(&db.url);
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema is current"));

    // The brokers' role: rows only, and of the audit trail only appending and
    // sealing (no CREATE on the schema: it never migrates).
    let role = format!("mayfly_broker_{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    exec(
        &db.url,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}';
             GRANT CONNECT ON DATABASE {name} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON _sqlx_migrations TO {role};
             GRANT SELECT, INSERT, UPDATE ON tasks, tokens, delegations, approvals,
                   revocation_counter, signing_keys TO {role};
             GRANT SELECT, INSERT ON revocations TO {role};
             GRANT DELETE ON tasks, tokens, delegations, approvals, revocations TO {role};
             GRANT SELECT, INSERT, DELETE ON freezes TO {role};
             GRANT SELECT, INSERT ON audit_events TO {role};
             GRANT UPDATE (seq, prev_hash, hash) ON audit_events TO {role};
             GRANT SELECT, UPDATE ON audit_chain TO {role};
             GRANT SELECT, UPDATE ON audit_anchor TO {role};
             GRANT DELETE ON audit_events TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        ),
    )
    .await
    .expect("create the broker role");
    let broker_url = as_user(&db.url, &role, &password);

    let app = spawn_with(pki, no_migrate(&broker_url)).await;
    let task = app.open_task(AGENT, 600).await;
    let minted = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(
            pb::revocation_target::Target::Token(minted.jti.clone()),
            "drill",
        ))
        .await
        .expect("revoke");
    let v = app
        .admin(ADMIN)
        .await
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(v.intact, "{v:?}");
    assert!(v.events_checked >= 3, "{v:?}");

    // Archiving moves the anchor and removes what it archived.
    let mut admin = app.admin(ADMIN).await;
    let later = mayfly::clock::Clock::now(&app.clock) + std::time::Duration::from_secs(1);
    let before = prost_types::Timestamp {
        seconds: later.unix_timestamp(),
        nanos: 0,
    };
    let export = admin
        .export_audit(pb::ExportAuditRequest {
            before: Some(before),
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let through = export.through.expect("an end");
    let archived = admin
        .archive_audit(pb::ArchiveAuditRequest {
            through_sequence: through.sequence,
            through_hash: through.hash,
            before: Some(before),
        })
        .await
        .expect("archive")
        .into_inner();
    assert_eq!(archived.events_removed, v.events_checked);
    let v = admin
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(v.intact, "{v:?}");

    // What the role cannot do to the audit trail.
    for attack in [
        "UPDATE audit_events SET reason = 'nothing happened'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "UPDATE audit_chain SET last_seq = 0",
        "UPDATE audit_anchor SET seq = 0",
        "DELETE FROM audit_anchor",
        "TRUNCATE audit_anchor",
        "UPDATE revocations SET reason = 'nothing happened'",
        // The role may prune, but no revocation younger than 25 hours.
        "DELETE FROM revocations",
        "TRUNCATE revocations",
        "CREATE TABLE shadow (x int)",
    ] {
        let e = exec(&broker_url, attack).await.expect_err(attack);
        let e = e.to_string();
        assert!(
            e.contains("permission denied")
                || e.contains("must be owner")
                || e.contains("append-only")
                || e.contains("moves only by sealing")
                || e.contains("audit anchor")
                || e.contains("only events older than 25 hours"),
            "{attack}: {e}"
        );
    }

    app.stop().await.unwrap();

    // A migration applied from another file (a weakened trigger, say) is refused.
    exec(
        &db.url,
        "UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 20261123000003",
    )
    .await
    .unwrap();
    let pki = Arc::new(Pki::new());
    let cfg = Config::parse(&no_migrate(&broker_url).render(&pki), "t").unwrap();
    let err = match mayfly::app::build(cfg, Arc::new(ManualClock::default())).await {
        Ok(_) => panic!("a broker started on a tampered schema"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("20261123000003") && err.contains("different file"),
        "{err}"
    );
    let _ = exec(&db.url, &format!("DROP OWNED BY {role}")).await;
    drop(db);
    exec(&admin_url(), &format!("DROP ROLE IF EXISTS {role}"))
        .await
        .expect("drop the broker role");
}
