//! Property tests: any text, any TOML document and any value of every key is
//! a configuration or an error naming the key, never a panic.
use super::*;
use crate::testing::{any_text, matching, toml_string as quoted};
use proptest::prelude::*;
use std::path::Path;

/// Every key of the file, by section, with the value the base document gives
/// it (a complete, valid configuration).
const KEYS: &[(&str, &str, &str)] = &[
    ("server", "grpc_addr", "\"127.0.0.1:8443\""),
    ("server", "http_addr", "\"127.0.0.1:8080\""),
    ("server", "cert", "\"broker.crt\""),
    ("server", "key", "\"broker.key\""),
    ("server", "issuer", "\"https://mayfly.test\""),
    ("server", "shutdown_grace", "\"10s\""),
    ("server", "reload_interval", "\"5s\""),
    (
        "database",
        "url",
        "\"postgres://postgres@127.0.0.1/mayfly\"",
    ),
    ("database", "max_connections", "16"),
    ("database", "connect_timeout", "\"5s\""),
    ("database", "migrate", "true"),
    ("database", "probe_interval", "\"1s\""),
    ("trust_domains", "name", "\"example.org\""),
    ("trust_domains", "bundle", "\"ca.pem\""),
    ("roles", "agent", "[\"spiffe://example.org/agent/*\"]"),
    (
        "roles",
        "orchestrator",
        "[\"spiffe://example.org/orchestrator/*\"]",
    ),
    ("roles", "admin", "[\"spiffe://example.org/admin/*\"]"),
    ("roles", "verifier", "[\"spiffe://example.org/verifier/*\"]"),
    ("tasks", "sweep_interval", "\"1s\""),
    ("tasks", "approval_ttl", "\"15m\""),
    ("keys", "heartbeat", "\"60s\""),
    ("revocation", "heartbeat", "\"5s\""),
    ("revocation", "poll_interval", "\"2s\""),
    ("policy", "dir", "\"policies\""),
    ("policy", "environment", "\"prod-eu\""),
    ("policy", "reload_interval", "\"2s\""),
    ("audit", "seal_interval", "\"100ms\""),
    ("retention", "interval", "\"60s\""),
    ("retention", "batch", "500"),
    ("retention", "tokens", "\"30d\""),
    ("retention", "offers", "\"30d\""),
    ("retention", "approvals", "\"30d\""),
    ("retention", "tasks", "\"31d\""),
    ("retention", "revocations", "\"7d\""),
    ("limits", "max_connections", "4096"),
    ("limits", "max_handshakes", "512"),
    ("limits", "handshake_timeout", "\"5s\""),
    ("limits", "first_request_timeout", "\"5s\""),
    ("limits", "idle_timeout", "\"5m\""),
    ("limits", "header_read_timeout", "\"5s\""),
    ("limits", "keepalive_interval", "\"30s\""),
    ("limits", "keepalive_timeout", "\"10s\""),
    ("limits", "max_concurrent_streams", "128"),
    ("limits", "max_header_bytes", "16384"),
    ("limits", "task_message_bytes", "65536"),
    ("limits", "token_message_bytes", "16384"),
    ("limits", "admin_message_bytes", "16384"),
    ("limits", "verifier_message_bytes", "16384"),
    ("limits", "log_summary_interval", "\"60s\""),
];

/// The base document with key `over.0` of [`KEYS`] set to the TOML text `over.1`.
fn document(over: Option<(usize, &str)>) -> String {
    let mut out = String::new();
    let mut section = "";
    for (i, (sec, key, value)) in KEYS.iter().enumerate() {
        if *sec != section {
            out += &if *sec == "trust_domains" {
                "\n[[trust_domains]]\n".to_string()
            } else {
                format!("\n[{sec}]\n")
            };
            section = sec;
        }
        let value = match over {
            Some((j, v)) if j == i => v,
            _ => value,
        };
        out += &format!("{key} = {value}\n");
    }
    out
}

/// The base document, parsed once.
static BASE: std::sync::LazyLock<Config> = std::sync::LazyLock::new(|| {
    Config::parse(&document(None), "mayfly.toml").expect("the base document parses")
});

fn load(text: &str) -> Result<Config, ConfigError> {
    let c = Config::parse(text, "mayfly.toml")?;
    c.validate()?;
    Ok(c)
}

/// Durations as humantime reads them, and near misses.
fn duration_text() -> impl Strategy<Value = String> {
    matching("[0-9]{1,22} ?(ns|us|ms|s|sec|m|min|h|d|w|M|y|years|parsecs|)( [0-9]{1,3}(s|m))?")
}

fn address_text() -> impl Strategy<Value = String> {
    matching(
        "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|::1|localhost|999\\.1\\.1\\.1|\\[::ffff:1\\.2\\.3\\.4\\]|)(:[0-9]{0,6})?",
    )
}

fn pattern_text() -> impl Strategy<Value = String> {
    matching("(spiffe://|https://|)(example\\.org|Ex\\.org|\\*|)(/[a-z*]{0,3}){0,3}")
}

/// The text of one TOML value (on one line) of any type, or not TOML at all.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => duration_text().prop_map(|s| quoted(&s)),
        2 => address_text().prop_map(|s| quoted(&s)),
        2 => prop::collection::vec(pattern_text(), 0..3)
            .prop_map(|v| format!("[{}]", v.iter().map(|p| quoted(p)).collect::<Vec<_>>().join(", "))),
        2 => any_text().prop_map(|s| quoted(&s)),
        1 => matching("(postgres|postgresql|sqlite|mysql|)(:|://)[a-z:/@.?=]{0,16}").prop_map(|s| quoted(&s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::from(u32::MAX) + 1)].prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "nan".into() }),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("1979-05-27T07:32:00Z".to_string()),
        1 => Just("[]".to_string()),
        1 => Just("{ a = 1 }".to_string()),
        1 => Just("[1, \"2\"]".to_string()),
        // Not a value: the error is still on this key's line.
        1 => matching("[a-z0-9 =,.:+-]{0,12}"),
    ]
}

/// Where [`Config::validate`] wants each duration key, as (least, most).
fn duration_range(section: &str, key: &str) -> Option<(Duration, Duration)> {
    let ms = Duration::from_millis;
    let day = Duration::from_secs(86_400);
    let positive = Duration::from_nanos(1);
    Some(match (section, key) {
        ("server", "shutdown_grace") | ("database", "connect_timeout") => {
            (Duration::ZERO, Duration::MAX)
        }
        ("server", "reload_interval") | ("policy", "reload_interval") => (positive, day),
        ("tasks", "sweep_interval") | ("keys", "heartbeat") => (positive, Duration::MAX),
        ("tasks", "approval_ttl") => (Duration::from_secs(1), day),
        ("revocation", "heartbeat") | ("revocation", "poll_interval") => (ms(10), Duration::MAX),
        ("audit", "seal_interval") => (ms(10), ms(60_000)),
        ("retention", "interval") => (ms(1000), day),
        // Up to the base document's 31 days of tasks, less a day.
        ("retention", "tokens") => (crate::domain::retention::MIN_TOKEN_RETENTION, day * 30),
        ("retention", "offers") | ("retention", "approvals") => {
            (crate::domain::retention::MIN_LAPSED_RETENTION, day * 30)
        }
        // With the base document's 30 days of tokens, offers and approvals.
        ("retention", "tasks") => (day * 31, day * 3650),
        ("retention", "revocations") => {
            (crate::domain::retention::MIN_REVOCATION_HISTORY, day * 3650)
        }
        ("database", "probe_interval") => (ms(100), ms(60_000)),
        ("limits", "handshake_timeout") | ("limits", "header_read_timeout") => {
            (ms(100), ms(60_000))
        }
        ("limits", "first_request_timeout") => (ms(100), ms(300_000)),
        ("limits", "idle_timeout") => (ms(1000), day),
        ("limits", "keepalive_interval") => (ms(1000), ms(3_600_000)),
        ("limits", "keepalive_timeout") => (ms(100), ms(300_000)),
        ("limits", "log_summary_interval") => (ms(1000), ms(3_600_000)),
        _ => return None,
    })
}

fn duration_field<'c>(c: &'c mut Config, section: &str, key: &str) -> &'c mut Duration {
    match (section, key) {
        ("server", "shutdown_grace") => &mut c.server.shutdown_grace,
        ("server", "reload_interval") => &mut c.server.reload_interval,
        ("database", "connect_timeout") => &mut c.database.connect_timeout,
        ("tasks", "sweep_interval") => &mut c.tasks.sweep_interval,
        ("tasks", "approval_ttl") => &mut c.tasks.approval_ttl,
        ("keys", "heartbeat") => &mut c.keys.heartbeat,
        ("revocation", "heartbeat") => &mut c.revocation.heartbeat,
        ("revocation", "poll_interval") => &mut c.revocation.poll_interval,
        ("policy", "reload_interval") => &mut c.policy.reload_interval,
        ("audit", "seal_interval") => &mut c.audit.seal_interval,
        ("retention", "interval") => &mut c.retention.interval,
        ("retention", "tokens") => &mut c.retention.tokens,
        ("retention", "offers") => &mut c.retention.offers,
        ("retention", "approvals") => &mut c.retention.approvals,
        ("retention", "tasks") => &mut c.retention.tasks,
        ("retention", "revocations") => &mut c.retention.revocations,
        ("database", "probe_interval") => &mut c.database.probe_interval,
        ("limits", "handshake_timeout") => &mut c.limits.handshake_timeout,
        ("limits", "first_request_timeout") => &mut c.limits.first_request_timeout,
        ("limits", "idle_timeout") => &mut c.limits.idle_timeout,
        ("limits", "header_read_timeout") => &mut c.limits.header_read_timeout,
        ("limits", "keepalive_interval") => &mut c.limits.keepalive_interval,
        ("limits", "keepalive_timeout") => &mut c.limits.keepalive_timeout,
        ("limits", "log_summary_interval") => &mut c.limits.log_summary_interval,
        _ => unreachable!("{section}.{key} is not a duration"),
    }
}

#[test]
fn the_base_document_of_the_properties_is_valid() {
    load(&document(None)).expect("the base document loads");
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn any_text_is_a_config_or_an_error_without_panicking(s in any_text()) {
        if let Ok(c) = Config::parse(&s, "mayfly.toml") {
            let _ = c.validate();
        }
    }

    #[test]
    fn any_value_of_any_key_loads_or_is_refused_naming_the_key(
        i in 0..KEYS.len(),
        value in toml_value(),
    ) {
        let (section, key, _) = KEYS[i];
        let text = document(Some((i, &value)));
        match load(&text) {
            Ok(_) => {}
            Err(ConfigError::Parse { why, .. }) => {
                // toml shows the line of the value, which starts with its key.
                prop_assert!(why.contains(&format!("{key} = ")), "{key} = {value}: {why}");
            }
            Err(ConfigError::Invalid { key: named, why }) => {
                let expected = if section == "trust_domains" {
                    format!("trust_domains[0].{key}")
                } else {
                    format!("{section}.{key}")
                };
                // A value may clash with another key's: then both are named.
                prop_assert!(named == expected || why.contains(key),
                    "{key} = {value}: {named}: {why}");
            }
            Err(e) => prop_assert!(false, "{key} = {value}: {e}"),
        }
    }

    #[test]
    fn a_duration_is_accepted_exactly_within_its_keys_range(
        i in prop::sample::select(
            (0..KEYS.len()).filter(|&i| duration_range(KEYS[i].0, KEYS[i].1).is_some()).collect::<Vec<_>>(),
        ),
        nanos in prop_oneof![
            prop::sample::select(vec![0u64, 1, 9_999_999, 10_000_000, 10_000_001, 999_999_999, 1_000_000_000]),
            prop::sample::select(vec![60_000_000_000u64, 60_000_000_001, 86_400_000_000_000, 86_400_000_000_001]),
            0u64..100_000_000_000_000,
            any::<u64>(),
        ],
    ) {
        // The file's durations reach validate() through humantime_serde, which
        // the key-by-key property above drives; this one asks validate() alone.
        let (section, key, _) = KEYS[i];
        let d = Duration::from_nanos(nanos);
        let mut c = BASE.clone();
        *duration_field(&mut c, section, key) = d;
        let (least, most) = duration_range(section, key).expect("a duration key");
        match c.validate() {
            Ok(()) => prop_assert!((least..=most).contains(&d), "{section}.{key} = {d:?} was accepted"),
            Err(e) => {
                prop_assert!(!(least..=most).contains(&d), "{section}.{key} = {d:?}: {e}");
                let prefix = format!("{section}.{key}: ");
                // The one rule across keys: tasks are kept longer than what is
                // kept of them, so a longer retention of that is refused there.
                let over_tasks = section == "retention"
                    && ["tokens", "offers", "approvals"].contains(&key)
                    && e.to_string().starts_with("retention.tasks: ");
                prop_assert!(e.to_string().starts_with(&prefix) || over_tasks, "{section}.{key} = {d:?}: {e}");
            }
        }
    }

    #[test]
    fn a_socket_address_is_accepted_unless_both_ports_are_one(
        http in any::<bool>(),
        ip in prop::sample::select(vec!["127.0.0.1", "0.0.0.0", "[::1]", "[::]", "10.1.2.3"]),
        port in prop_oneof![Just(0u16), Just(8080), Just(8443), any::<u16>()],
    ) {
        let (i, other) = if http { (1, "127.0.0.1:8443") } else { (0, "127.0.0.1:8080") };
        let addr = format!("{ip}:{port}");
        let verdict = load(&document(Some((i, &quoted(&addr)))));
        if addr == other && port != 0 {
            let e = verdict.err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(e.starts_with("server.http_addr: must differ from server.grpc_addr"), "{e}");
        } else {
            let c = verdict.map_err(|e| TestCaseError::fail(format!("{addr}: {e}")))?;
            let got = if http { c.server.http_addr } else { c.server.grpc_addr };
            prop_assert_eq!(got.to_string(), addr);
        }
    }

    #[test]
    fn an_environment_override_applies_or_is_refused_naming_the_variable(
        var in prop::sample::select(vec![ENV_DATABASE_URL, ENV_GRPC_ADDR, ENV_HTTP_ADDR]),
        value in prop_oneof![address_text(), any_text()],
    ) {
        let mut c = BASE.clone();
        match c.apply_env(|k| (k == var).then(|| value.clone())) {
            Ok(()) => {
                let got = match var {
                    ENV_DATABASE_URL => c.database.url.as_ref().map(|u| u.expose().to_string()),
                    ENV_GRPC_ADDR => Some(c.server.grpc_addr.to_string()),
                    _ => Some(c.server.http_addr.to_string()),
                };
                let parsed = value.parse::<SocketAddr>().map(|a| a.to_string());
                prop_assert!(got.as_deref() == Some(value.as_str()) || got == parsed.ok());
            }
            Err(e) => {
                prop_assert!(var != ENV_DATABASE_URL);
                let prefix = format!("environment variable {var}: ");
                prop_assert!(e.to_string().starts_with(&prefix), "{e}");
            }
        }
    }

    #[test]
    fn any_toml_document_is_a_config_or_an_error_without_panicking(doc in toml_document()) {
        let text = toml::to_string(&doc).unwrap_or_default();
        if let Ok(c) = Config::parse(&text, "mayfly.toml") {
            let _ = c.validate();
            let mut c = c;
            c.resolve_paths(Path::new("/etc/mayfly"));
        }
    }
}

/// TOML tables shaped like the configuration: its sections and keys (and
/// others), holding values of every type, the strings often ones its
/// fields parse.
fn toml_document() -> impl Strategy<Value = toml::Table> {
    use toml::Value;
    let string = prop_oneof![duration_text(), address_text(), pattern_text(), any_text()];
    let leaf = prop_oneof![
        4 => string.prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::Integer),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => any::<f64>().prop_map(Value::Float),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop::collection::vec(inner, 0..3).prop_map(Value::Array)
    });
    let keys: Vec<&'static str> = KEYS.iter().map(|(_, k, _)| *k).chain(["bogus"]).collect();
    let section =
        prop::collection::btree_map(prop::sample::select(keys), value, 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<toml::Table>()
        });
    let names: Vec<&'static str> = KEYS.iter().map(|(s, _, _)| *s).chain(["bogus"]).collect();
    prop::collection::btree_map(
        prop::sample::select(names),
        prop_oneof![
            4 => section.clone().prop_map(Value::Table),
            1 => prop::collection::vec(section.prop_map(Value::Table), 0..3).prop_map(Value::Array),
        ],
        0..10,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}
