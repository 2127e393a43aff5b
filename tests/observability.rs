//! Statistics and metrics against real clients: fio's NBD engine drives a
//! volume, `umbra stats --json` and `volume info` must count exactly what
//! fio says it did, and the Prometheus endpoint, scraped with curl during
//! the load and parsed by Python's `prometheus_client` OpenMetrics parser
//! (strict about the format), must move by the same amounts.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// The system Python, where Debian's python3-prometheus-client lives.
const PYTHON: &str = "/usr/bin/python3";

/// What fio reports: (total_ios, io_bytes) of reads, writes and syncs.
struct FioResult {
    read: (u64, u64),
    write: (u64, u64),
    sync: u64,
}

fn fio(uri: &str, args: &[&str]) -> FioResult {
    let out = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("fio")
        .args(["--name=job", "--ioengine=nbd", "--output-format=json"])
        .arg(format!("--uri={uri}"))
        .arg(format!("--output={}", out.path().display()))
        .args(args)
        .status()
        .expect("run fio");
    assert!(st.success(), "fio {args:?} failed");
    let j: Value = serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap();
    let job = &j["jobs"][0];
    let pair = |k: &str| {
        (
            job[k]["total_ios"].as_u64().unwrap(),
            job[k]["io_bytes"].as_u64().unwrap(),
        )
    };
    FioResult {
        read: pair("read"),
        write: pair("write"),
        sync: job["sync"]["total_ios"].as_u64().unwrap_or(0),
    }
}

fn io(d: &Daemon, vol: &str) -> Value {
    d.json(&["stats", vol])["volumes"][0]["io"].clone()
}

fn delta(a: &Value, b: &Value, op: &str, k: &str) -> u64 {
    b[op][k].as_u64().unwrap() - a[op][k].as_u64().unwrap()
}

/// Scrape `url` with curl and parse it with the OpenMetrics parser: every
/// sample as `name{label="v",...}` (labels sorted) to its value.
fn scrape(url: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;
    let page = Command::new("curl").args(["-sf", url]).output().unwrap();
    assert!(page.status.success(), "curl {url} failed");
    let mut py = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut py.stdin.take().unwrap(), &page.stdout).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stats_and_metrics_count_exactly_what_fio_did() {
    require_tool("fio");
    require_tool("curl");
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} (with python3-prometheus-client) is needed"
    );
    let d = Daemon::start_with_env(&[("UMBRA_METRICS", "127.0.0.1:0")]);
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    d.export_nbd("v");
    let uri = d.uri_of("v");
    let metrics = d.json(&["status"])["metrics"]
        .as_str()
        .expect("status names the metrics endpoint")
        .to_owned();

    // Fixed-size jobs: the counters move by exactly fio's numbers.
    let before = io(&d, "v");
    let w = fio(
        &uri,
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--io_size=8M",
            "--iodepth=8",
            "--fsync=32",
        ],
    );
    let r = fio(
        &uri,
        &["--rw=randread", "--bs=64k", "--size=16M", "--iodepth=4"],
    );
    let after = io(&d, "v");
    assert_eq!(delta(&before, &after, "write", "ops"), w.write.0);
    assert_eq!(delta(&before, &after, "write", "bytes"), w.write.1);
    assert_eq!(delta(&before, &after, "read", "ops"), r.read.0);
    assert_eq!(delta(&before, &after, "read", "bytes"), r.read.1);
    assert_eq!(delta(&before, &after, "flush", "ops"), w.sync + r.sync);
    assert_eq!(w.read.0 + r.write.0, 0);
    for op in ["read", "write", "flush"] {
        assert_eq!(delta(&before, &after, op, "errors"), 0, "{op}");
        let l = &after[op]["latency_us"];
        let (p50, p99, max) = (
            l["p50"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{op}: {l}");
    }
    assert_eq!(after["in_flight"], 0);
    // `volume info` shows the same totals.
    let info = d.json(&["volume", "info", "v"]);
    assert_eq!(info["io"]["write"]["ops"], after["write"]["ops"]);
    assert_eq!(info["io"]["read"]["bytes"], after["read"]["bytes"]);

    // Metrics during a timed load: they move while fio runs, and by what
    // fio did once it is done.
    let key = |name: &str, op: &str| format!("{name}{{op=\"{op}\",volume=\"v\"}}");
    let m0 = scrape(&metrics);
    assert_eq!(
        m0[&key("umbra_volume_requests_total", "write")] as u64,
        after["write"]["ops"].as_u64().unwrap()
    );
    let load = {
        let uri = uri.clone();
        std::thread::spawn(move || {
            fio(
                &uri,
                &[
                    "--rw=randwrite",
                    "--bs=4k",
                    "--size=32M",
                    "--iodepth=16",
                    "--time_based",
                    "--runtime=4",
                ],
            )
        })
    };
    let writes = |m: &HashMap<String, f64>| m[&key("umbra_volume_requests_total", "write")];
    // While fio runs, scrapes see the counter rise, twice.
    let mut seen = vec![writes(&m0)];
    while seen.len() < 3 && !load.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let w = writes(&scrape(&metrics));
        if w > *seen.last().unwrap() {
            seen.push(w);
        }
    }
    assert!(
        seen.len() == 3,
        "the write counter did not move twice during the load: {seen:?}"
    );
    let f = load.join().unwrap();
    let m3 = scrape(&metrics);
    let moved = writes(&m3) - writes(&m0);
    assert!(
        (moved - f.write.0 as f64).abs() <= f.write.0 as f64 * 0.02,
        "metrics moved {moved} writes, fio did {}",
        f.write.0
    );
    let bytes = m3[&key("umbra_volume_bytes_total", "write")]
        - m0[&key("umbra_volume_bytes_total", "write")];
    assert!((bytes - f.write.1 as f64).abs() <= f.write.1 as f64 * 0.02);
    // The histogram counts every request.
    assert_eq!(
        m3[&key("umbra_volume_request_duration_seconds_count", "write")],
        writes(&m3)
    );
    assert_eq!(m3["umbra_volume_online{volume=\"v\"}"], 1.0);
}
