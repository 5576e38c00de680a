//! Examples: a good file, errors naming their key, environment overrides.
use super::*;

const GOOD: &str = r#"
[server]
grpc_addr = "127.0.0.1:8443"
http_addr = "127.0.0.1:8080"
cert = "broker.crt"
key = "broker.key"
issuer = "https://mayfly.example.org"

[database]
url = "postgres://postgres@127.0.0.1/mayfly"

[[trust_domains]]
name = "example.org"
bundle = "ca.pem"

[roles]
agent = ["spiffe://example.org/agent/*"]

[policy]
dir = "policies"
environment = "prod-eu"
"#;

fn err_of(text: &str) -> String {
    match Config::parse(text, "t.toml").and_then(|c| c.validate().map(|_| c)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_file_loads() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    c.validate().unwrap();
    assert_eq!(c.policy.reload_interval, Duration::from_secs(2));
}

#[test]
fn errors_name_the_key() {
    let e = err_of(&GOOD.replace("environment = \"prod-eu\"", "environment = \"\""));
    assert_eq!(e, "policy.environment: must not be empty");
    let e = err_of(&GOOD.replace("grpc_addr = \"127.0.0.1:8443\"", "grpc_addr = \"nope\""));
    assert!(e.contains("grpc_addr"), "{e}");
    let e = err_of(&GOOD.replace("[database]", "[database]\nbogus = 1"));
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = err_of(&GOOD.replace(
        "\"spiffe://example.org/agent/*\"]\n\n[policy]",
        "\"http://x\"]\n\n[policy]",
    ));
    assert!(e.contains("invalid SPIFFE ID pattern"), "{e}");
    let e = err_of(&GOOD.replace("url = \"postgres://postgres@127.0.0.1/mayfly\"", ""));
    assert!(e.starts_with("database.url: is not set"), "{e}");
    let e = err_of(&GOOD.replace(
        "agent = [\"spiffe://example.org/agent/*\"]\n",
        "agent = [\"spiffe://example.org/agent/*\"]\nadmin = [\"spiffe://example.org/**\"]\n",
    ));
    assert!(
        e.starts_with("roles.admin: spiffe://example.org/** can match"),
        "{e}"
    );
    let e = err_of(&GOOD.replace(
        "environment = \"prod-eu\"",
        "environment = \"prod-eu\"\nreload_interval = \"5 parsecs\"",
    ));
    assert!(e.contains("reload_interval"), "{e}");
}

#[test]
fn environment_overrides_the_file_and_bad_values_are_named() {
    let mut c = Config::parse(GOOD, "t.toml").unwrap();
    c.apply_env(|k| match k {
        ENV_GRPC_ADDR => Some("0.0.0.0:9443".into()),
        ENV_DATABASE_URL => Some("postgres://other/db".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.server.grpc_addr.port(), 9443);
    assert_eq!(
        c.database.url.as_ref().unwrap().expose(),
        "postgres://other/db"
    );
    let e = c
        .apply_env(|k| (k == ENV_HTTP_ADDR).then(|| "localhost".to_string()))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable MAYFLY_HTTP_ADDR"),
        "{e}"
    );
}

#[test]
fn the_database_url_is_never_printed() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    assert!(!format!("{c:?}").contains("postgres://"));
}

#[test]
fn the_issuer_must_be_an_https_url_and_the_front_door_settings_are_bounded() {
    let issuer = r#"issuer = "https://mayfly.example.org""#;
    for (bad, names) in [
        (r#"issuer = "mayfly""#, "server.issuer"),
        (
            r#"issuer = "http://mayfly.example.org""#,
            "must be an https URL",
        ),
        (
            r#"issuer = "https://mayfly.example.org/?tenant=a""#,
            "no query or fragment",
        ),
    ] {
        let e = err_of(&GOOD.replace(issuer, bad));
        assert!(e.contains(names), "{bad}: {e}");
    }
    let missing = GOOD.replace(issuer, "");
    assert!(err_of(&missing).contains("issuer"), "{}", err_of(&missing));
    for (oauth, names) in [
        ("url = \"ftp://x\"", "oauth.url"),
        ("poll_interval = \"0s\"", "oauth.poll_interval"),
        ("poll_interval = \"2m\"", "oauth.poll_interval"),
    ] {
        let e = err_of(&format!("{GOOD}\n[oauth]\n{oauth}\n"));
        assert!(e.contains(names), "{oauth}: {e}");
    }
    let c = Config::parse(
        &format!("{GOOD}\n[oauth]\nurl = \"https://localhost:8443/\"\n"),
        "t.toml",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.oauth.base_url(&c.server.issuer), "https://localhost:8443");
}
