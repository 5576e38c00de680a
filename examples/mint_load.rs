//! Load generator: the real broker in-process (mTLS, PostgreSQL), N agents minting
//! concurrently over keep-alive connections, through gRPC's `MintToken` and/or the
//! OAuth front door's `POST /oauth/token` on the same port, driven by
//! `mayfly::bench` (the driver of `mayfly bench`); plus the raw cost of signing
//! and verifying one token. Prints rates and latency percentiles, the process's
//! CPU time per mint, and each edge's throughput against the first's.
//!
//! cargo run --release --example mint_load -- [concurrency] [seconds] [rounds]
//! (defaults 16, 10, 1. EDGE: the edges measured, comma-separated, default
//! `grpc`: `grpc` (4 shared HTTP/2 channels), `http` (the front door over
//! HTTP/1.1, one keep-alive connection per worker), `h2` (the front door over 4
//! shared HTTP/2 connections). Each round runs every edge for `seconds`, in
//! turn, the order reversed every other round so that a drift of the machine's
//! load favours none; every edge first mints for a second unrecorded.
//! ONE_TASK=1: every worker of an edge mints in the same task; STORE=sqlite: the
//! embedded SQLite store in a temporary file instead of PostgreSQL)
//! DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) must allow
//! CREATE DATABASE; a fresh database is created and dropped.
// `support_task` and `channel` (the other load generators') are not used here.
#[allow(dead_code)]
mod common;

use mayfly::bench::{Bench, Edge, Figures};
use mayfly::config::Config;
use mayfly::token::{Claims, Confirmation, KeyRecord, KeySet, SigningKey};
use std::time::{Duration, Instant};

fn crypto() -> anyhow::Result<()> {
    let key = SigningKey::generate().map_err(|_| anyhow::anyhow!("keygen"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        iss: "mayfly".into(),
        sub: "spiffe://example.org/agent/a".into(),
        aud: "crm-api".into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: "read:customers/eu/42".into(),
        task: uuid::Uuid::new_v4().to_string(),
        wf: "support".into(),
        cnf: Confirmation {
            x5t_s256: "x".repeat(43),
        },
        act: None,
        client_id: "spiffe://example.org/agent/a".into(),
        depth: 0,
        ancestors: vec![],
    };
    let n = 50_000;
    let t = Instant::now();
    let mut token = String::new();
    for _ in 0..n {
        token = key.sign(&claims)?;
    }
    let sign = t.elapsed();
    let set = KeySet::from_records(&[KeyRecord {
        kid: key.kid().into(),
        public_key: key.public_key().to_vec(),
        created_at: time::OffsetDateTime::now_utc(),
        // Published past the verification below (a key is trusted only before its
        // `not_after`: one ending now refused every token when signing took under
        // a second).
        not_after: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    }]);
    let t = Instant::now();
    for _ in 0..n {
        set.verify(&token, now, 0)?;
    }
    let verify = t.elapsed();
    println!(
        "sign:   {:>8.0} tokens/s ({:.1} us/token, one core)",
        n as f64 / sign.as_secs_f64(),
        sign.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "verify: {:>8.0} tokens/s ({:.1} us/token, one core)",
        n as f64 / verify.as_secs_f64(),
        verify.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

/// This process's CPU time, user and system, all threads (`/proc/self/stat`,
/// in USER_HZ ticks: 100 a second on Linux); None where there is no procfs.
/// Unlike a rate, it hardly moves when other work shares the cores.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses: state first,
    // utime and stime the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn edge(s: &str) -> anyhow::Result<Edge> {
    match s.trim() {
        "grpc" => Ok(Edge::Grpc),
        "http" => Ok(Edge::Http),
        "h2" => Ok(Edge::H2),
        other => anyhow::bail!("EDGE: {other:?} is none of grpc, http, h2"),
    }
}

/// What an edge measured over rounds, and the CPU time this process (broker and
/// load generator) spent meanwhile; `None` where that cannot be read.
struct Total {
    figures: Figures,
    cpu: Option<Duration>,
}

fn print(label: &str, f: &Figures, cpu: Option<Duration>) {
    let ms = |p| f.latency.quantile(p).as_secs_f64() * 1e3;
    let cpu = match cpu {
        Some(c) if f.mints() > 0 => format!(
            "; process CPU {:.0} us/mint",
            c.as_secs_f64() * 1e6 / f.mints() as f64
        ),
        _ => String::new(),
    };
    println!(
        "{label:<16} {:>7.0} tokens/s over {:>5.1} s, {} ok, {} errors; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{cpu}",
        f.rate(),
        f.elapsed.as_secs_f64(),
        f.mints(),
        f.errors(),
        ms(0.50),
        ms(0.99),
        ms(0.999),
    );
    for k in f.error_kinds() {
        eprintln!("  {} x{}: {}", k.kind, k.count, k.examples.join(" | "));
    }
}

/// Runs `bench` for `seconds`: what it measured, and the CPU time spent.
async fn round(bench: &mut Bench, seconds: f64) -> (Figures, Option<Duration>) {
    let before = cpu_time();
    let f = bench.run_for(Duration::from_secs_f64(seconds)).await;
    let cpu = cpu_time().zip(before).map(|(after, before)| after - before);
    (f, cpu)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let rounds: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let edges = std::env::var("EDGE")
        .unwrap_or_else(|_| "grpc".into())
        .split(',')
        .map(edge)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let one_task = std::env::var("ONE_TASK").is_ok();
    mayfly::app::install_crypto();
    crypto()?;

    let db = common::BenchDb::create().await?;
    let dir = tempfile::tempdir()?;
    let db_url = match std::env::var("STORE").as_deref() {
        Ok("sqlite") => format!("sqlite://{}/bench.db", dir.path().display()),
        _ => db.url.clone(),
    };
    let ca = common::broker_files(dir.path())?;
    let cfg = common::broker_config(dir.path(), &db_url, "");
    let cfg = Config::parse(&cfg, "bench")?;
    cfg.validate()?;
    let broker = common::serve(cfg).await?;
    let parties = common::parties(dir.path(), &ca, broker.addr)?;

    // Every edge's connections (and tasks: one per worker, since one task's
    // mints are serialised by design on its budget row) are opened before any
    // is measured, and stay open from round to round.
    let mut pools: Vec<(Edge, Bench, Total)> = vec![];
    for &edge in &edges {
        let mut bench = Bench::start(common::plan(edge, concurrency, one_task)?, &parties).await?;
        // Unrecorded: the store's statements prepared on its pool connections,
        // the connections' flow-control windows grown, for every edge alike.
        bench.warm_up(Duration::from_secs(1)).await;
        let total = Total {
            figures: Figures::default(),
            cpu: Some(Duration::ZERO),
        };
        pools.push((edge, bench, total));
    }
    println!(
        "mint: concurrency {concurrency}, {} per edge, {rounds} round(s) of {seconds} s per edge",
        if one_task {
            "one task"
        } else {
            "a task per worker"
        }
    );

    // Per round, each edge's rate over the first edge's in the same round.
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; pools.len()];
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..pools.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        let mut rates = vec![0.0; pools.len()];
        for i in order {
            let (edge, bench, total) = &mut pools[i];
            // A front-door connection the broker closed while this edge waited
            // for its turn, reopened so that a round measures mints over open
            // connections.
            let reopened = bench.reopen_closed().await?;
            if reopened > 0 {
                println!(
                    "{}: {reopened} connections closed by the broker since the last round, reopened",
                    edge.name()
                );
            }
            let (figures, cpu) = round(bench, seconds as f64).await;
            print(&format!("{} round {}", edge.name(), r + 1), &figures, cpu);
            rates[i] = figures.rate();
            total.figures.merge(&figures);
            total.cpu = total.cpu.zip(cpu).map(|(a, b)| a + b);
        }
        for (i, rate) in rates.iter().enumerate() {
            ratios[i].push(rate / rates[0]);
        }
    }
    if rounds > 1 || pools.len() > 1 {
        for (edge, _, total) in &pools {
            print(
                &format!("{} all rounds", edge.name()),
                &total.figures,
                total.cpu,
            );
        }
    }
    let first = pools[0].2.figures.rate();
    for (i, (edge, _, total)) in pools.iter().enumerate().skip(1) {
        let each: Vec<String> = ratios[i].iter().map(|q| format!("{q:.2}")).collect();
        // The median round: one round disturbed by other work on the machine
        // moves the overall ratio, hardly the median.
        let mut sorted = ratios[i].clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        println!(
            "{} / {}: {:.2} of the throughput (rounds: {}; median round {median:.2})",
            edge.name(),
            pools[0].0.name(),
            total.figures.rate() / first,
            each.join(", ")
        );
    }
    for (_, bench, _) in pools {
        bench.stop();
    }
    broker.stop().await;
    db.drop_now().await?;
    Ok(())
}
