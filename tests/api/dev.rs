//! `mayfly dev`: the README's "run it" command. Started as a real process, on an
//! embedded SQLite database (a PostgreSQL URL in the environment is ignored), and
//! driven by exactly the commands it prints.
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

struct Dev {
    child: tokio::process::Child,
    /// The walkthrough it printed: shell lines, comments included.
    script: String,
    banner: String,
}

/// Starts `mayfly dev --dir <dir>` on free ports and reads its banner.
async fn start_dev(dir: &std::path::Path) -> Dev {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args([
            "dev",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir)
        // Not used by `dev`: it keeps its own SQLite database.
        .env(
            "MAYFLY_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/nothing",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mayfly dev");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut banner, mut script, mut in_script) = (String::new(), String::new(), false);
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Stop the broker") {
                return true;
            }
            if line.starts_with("Try it in another shell") {
                in_script = true;
            } else if in_script {
                script.push_str(&line);
                script.push('\n');
            }
        }
        false
    };
    let complete = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or(false);
    if !complete {
        let _ = child.kill().await;
        panic!(
            "mayfly dev printed no complete banner:\n{banner}\nlog:\n{}",
            log.await.unwrap_or_default()
        );
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Dev {
        child,
        script,
        banner,
    }
}

/// Runs the printed walkthrough in bash, stopping at the first failing command.
async fn run_script(script: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .env_remove("MAYFLY_OUTPUT")
        .output()
        .await
        .expect("run bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The line index of the first line at or after `from` whose words are `words`.
fn line_of(out: &str, from: usize, words: &[&str]) -> Option<usize> {
    out.lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| l.split_whitespace().collect::<Vec<_>>() == words)
        .map(|(i, _)| i)
}

#[tokio::test]
async fn mayfly_dev_runs_a_broker_on_sqlite_and_its_printed_commands_walk_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev state");
    let mut dev = start_dev(&dir).await;

    // Everything it needs is in its directory: the database is SQLite.
    for f in [
        "mayfly.db",
        "mayfly.toml",
        "certs/ca.pem",
        "certs/agent.key",
        "policies/support.cedar",
    ] {
        assert!(dir.join(f).exists(), "{f} missing; banner:\n{}", dev.banner);
    }
    assert!(dev.banner.contains("mayfly.db"), "{}", dev.banner);
    assert!(
        !dev.script.contains('<'),
        "a placeholder in:\n{}",
        dev.script
    );

    let (ok, out, err) = run_script(&dev.script).await;
    assert!(
        ok,
        "the walkthrough failed:\n{err}\nstdout:\n{out}\nscript:\n{}",
        dev.script
    );
    // Introspected while the task ran: active; after completing it: not.
    let live = line_of(&out, 0, &["active", "true"]).expect(&out);
    let dead = line_of(&out, live + 1, &["active", "false"]).expect(&out);
    assert!(
        out.lines()
            .skip(live)
            .take(dead - live)
            .any(|l| l.starts_with("task") && l.contains(r#""state":"completed""#)),
        "the task was completed in between:\n{out}"
    );
    // The security team's view: the task's story and an intact chain.
    assert!(out.contains("answer ticket 4711"), "{out}");
    assert!(out.contains("token_minted"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("intact") && l.contains("true")),
        "{out}"
    );

    // The file belongs to this broker: a second one on it is refused, by name.
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args([
            "dev",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .await
        .unwrap();
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{second_err}");
    assert!(
        second_err.contains("in use by another Mayfly process"),
        "{second_err}"
    );

    // Restarted on the same directory, it keeps its state: the completed task
    // is still there, and the certificates are the same ones.
    let ca = std::fs::read(dir.join("certs/ca.pem")).unwrap();
    dev.child.kill().await.unwrap();
    let _ = dev.child.wait().await;
    let dev = start_dev(&dir).await;
    assert_eq!(std::fs::read(dir.join("certs/ca.pem")).unwrap(), ca);
    let list = format!(
        r#"{}
"$M" --cert "$C/orchestrator.crt" --key "$C/orchestrator.key" --output json task list --state completed"#,
        dev.script
            .lines()
            .filter(|l| l.starts_with("export ") || l.starts_with("M="))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (ok, out, err) = run_script(&list).await;
    assert!(ok, "{err}");
    assert!(out.contains("answer ticket 4711"), "{out}");
}
