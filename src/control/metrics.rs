//! `umbra serve --metrics ADDR`: the daemon's counters in the Prometheus
//! (OpenMetrics) text exposition format at `http://ADDR/metrics`.
//!
//! One thread runs a small HTTP server (`tiny_http`, no async runtime) and
//! answers each scrape from the counters as they are at that moment
//! (`Daemon::volume_stats`): nothing is kept between scrapes, and the data
//! path pays nothing for a scrape but the relaxed loads of its counters.
//! The format is written by `prometheus-client`, the Prometheus project's
//! own Rust crate, through a collector that reads the daemon's snapshot.

use super::daemon::{Daemon, VolumeStats};
use crate::interposer::stats::{bucket_upper_ns, Op, OpSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

/// The default address: loopback only (the counters name volumes, peers
/// and addresses; exposing them further is the operator's choice).
pub const DEFAULT_METRICS: &str = "127.0.0.1:9633";

/// The latency histogram's bucket bounds in seconds: the volume's own
/// histogram is finer (`stats.rs`); these are what dashboards use.
const LATENCY_BOUNDS_S: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
];

/// Parse `--metrics`: `HOST:PORT`, or a bare port on loopback.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|e| {
        format!("metrics address {s:?}: {e} (give HOST:PORT, e.g. {DEFAULT_METRICS}, or a port)")
    })
}

/// The running metrics endpoint; [`MetricsServer::stop`] ends it.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr, daemon: Weak<Daemon>) -> Result<MetricsServer, String> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| format!("metrics: cannot listen on {addr}: {e}"))?,
        );
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("metrics: {addr} is not an IP address"))?;
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    let Some(d) = daemon.upgrade() else { return };
                    let path = req.url().split('?').next().unwrap_or("").to_owned();
                    let resp = match (req.method(), path.as_str()) {
                        (tiny_http::Method::Get, "/metrics") => match render(&d) {
                            Ok(body) => tiny_http::Response::from_string(body).with_header(header(
                                "Content-Type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )),
                            Err(e) => tiny_http::Response::from_string(format!("{e}\n"))
                                .with_status_code(500),
                        },
                        (tiny_http::Method::Get, "/") => tiny_http::Response::from_string(
                            "umbra: the counters are at /metrics\n",
                        ),
                        _ => tiny_http::Response::from_string("not found: try /metrics\n")
                            .with_status_code(404),
                    };
                    drop(d);
                    if let Err(e) = req.respond(resp) {
                        log::debug!("metrics: answering a scrape: {e}");
                    }
                }
            })
            .map_err(|e| format!("metrics: cannot start its thread: {e}"))?;
        log::info!("metrics at http://{bound}/metrics");
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    pub fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
}

/// The exposition text of every volume's counters right now.
pub fn render(d: &Daemon) -> Result<String, String> {
    let vols = d.volume_stats(&[]).map_err(|e| e.message)?;
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Snapshot(vols)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}

/// One scrape's data.
struct Snapshot(Vec<VolumeStats>);

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Snapshot({} volumes)", self.0.len())
    }
}

type Labels = Vec<(&'static str, String)>;

/// A metric family: a descriptor and one sample per label set.
fn family<T>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, T)>,
    mut each: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, T) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let mut f = m.encode_family(&labels)?;
        each(&mut f, v)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, u64)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Counter, samples, |f, v| {
        f.encode_counter::<NoLabelSet, _, u64>(&v, None)
    })
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, i64)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Gauge, samples, |f, v| {
        f.encode_gauge(&v)
    })
}

impl Snapshot {
    /// `(labels, op)` for every operation of every online volume.
    fn per_op(&self) -> Vec<(Labels, &OpSnapshot)> {
        self.0
            .iter()
            .flat_map(|v| {
                v.io.iter().flat_map(move |io| {
                    Op::ALL.iter().map(move |&op| {
                        (
                            vec![("volume", v.volume.clone()), ("op", op.as_str().to_owned())],
                            io.op(op),
                        )
                    })
                })
            })
            .collect()
    }

    /// `(labels, leg)` for every replication leg of every volume.
    fn legs(&self) -> Vec<(Labels, &serde_json::Value)> {
        self.0
            .iter()
            .flat_map(|v| {
                v.replication.iter().map(move |l| {
                    (
                        vec![
                            ("volume", v.volume.clone()),
                            ("set", l["name"].as_str().unwrap_or_default().to_owned()),
                            (
                                "peer",
                                l["peer_node"].as_str().unwrap_or_default().to_owned(),
                            ),
                            ("role", l["role"].as_str().unwrap_or_default().to_owned()),
                        ],
                        l,
                    )
                })
            })
            .collect()
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut enc;
        let ops = self.per_op();
        let pick = |f: fn(&OpSnapshot) -> u64| -> Vec<(Labels, u64)> {
            ops.iter().map(|(l, o)| (l.clone(), f(o))).collect()
        };
        counter(
            e,
            "umbra_volume_requests",
            "Requests through the volume, by operation (failed ones included).",
            pick(|o| o.ops),
        )?;
        counter(
            e,
            "umbra_volume_bytes",
            "Bytes moved by the volume's requests that succeeded, by operation.",
            pick(|o| o.bytes),
        )?;
        counter(
            e,
            "umbra_volume_errors",
            "Requests through the volume that failed, by operation.",
            pick(|o| o.errors),
        )?;
        gauge(
            e,
            "umbra_volume_in_flight_requests",
            "Requests in the volume's stack right now.",
            self.0
                .iter()
                .filter_map(|v| {
                    v.io.as_ref()
                        .map(|io| (vec![("volume", v.volume.clone())], io.in_flight as i64))
                })
                .collect(),
        )?;
        gauge(
            e,
            "umbra_volume_online",
            "1 when the volume serves, 0 when it is offline or failed.",
            self.0
                .iter()
                .map(|v| {
                    let up = v.online && v.failure.is_none();
                    (vec![("volume", v.volume.clone())], up as i64)
                })
                .collect(),
        )?;
        gauge(
            e,
            "umbra_volume_failed",
            "1 when the volume's backend failed (fail-stop: every request fails until `umbra volume reopen`).",
            self.0
                .iter()
                .map(|v| (vec![("volume", v.volume.clone())], v.failure.is_some() as i64))
                .collect(),
        )?;
        family(
            e,
            "umbra_volume_request_duration_seconds",
            "Time from a request's entry into the volume to its completion.",
            MetricType::Histogram,
            ops.iter().map(|(l, o)| (l.clone(), *o)),
            |f, o| {
                // Per bound, the requests above the bound before it (the
                // encoder accumulates); a fine bucket goes to the first
                // bound at or above its upper end, the rest to +Inf.
                let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_S
                    .iter()
                    .chain(std::iter::once(&f64::MAX))
                    .map(|&b| (b, 0))
                    .collect();
                for (i, n) in o.hist.iter().enumerate().filter(|(_, n)| **n > 0) {
                    let up = bucket_upper_ns(i) as f64 / 1e9;
                    let slot = LATENCY_BOUNDS_S
                        .iter()
                        .position(|&b| up <= b)
                        .unwrap_or(LATENCY_BOUNDS_S.len());
                    buckets[slot].1 += n;
                }
                f.encode_histogram::<NoLabelSet>(
                    o.latency_sum_ns as f64 / 1e9,
                    o.hist.iter().sum(),
                    &buckets,
                    None,
                )
            },
        )?;
        let caches: Vec<_> = self
            .0
            .iter()
            .filter_map(|v| {
                v.cache
                    .as_ref()
                    .map(|c| (vec![("volume", v.volume.clone())], c))
            })
            .collect();
        counter(
            e,
            "umbra_cache_read_hit_blocks",
            "4 KiB blocks read from the cache.",
            caches
                .iter()
                .map(|(l, c)| (l.clone(), c.read_hits))
                .collect(),
        )?;
        counter(
            e,
            "umbra_cache_read_miss_blocks",
            "4 KiB blocks the cache read from the volume below it.",
            caches
                .iter()
                .map(|(l, c)| (l.clone(), c.read_misses))
                .collect(),
        )?;
        gauge(
            e,
            "umbra_cache_cached_bytes",
            "Bytes held in the cache.",
            caches
                .iter()
                .map(|(l, c)| (l.clone(), c.cached_bytes as i64))
                .collect(),
        )?;
        let sets: Vec<(Labels, &crate::services::image::SetInfo)> = self
            .0
            .iter()
            .flat_map(|v| {
                v.image.iter().map(move |s| {
                    (
                        vec![("volume", v.volume.clone()), ("set", s.name.clone())],
                        s,
                    )
                })
            })
            .collect();
        counter(
            e,
            "umbra_image_cow_bytes",
            "Bytes copied from the master before a write first touched them (copy-on-write).",
            sets.iter()
                .map(|(l, s)| (l.clone(), s.cow_chunks * s.chunk_bytes))
                .collect(),
        )?;
        counter(
            e,
            "umbra_image_copied_bytes",
            "Bytes the background copy moved (full copies, updates, restores).",
            sets.iter()
                .map(|(l, s)| (l.clone(), s.copied_chunks * s.chunk_bytes))
                .collect(),
        )?;
        gauge(
            e,
            "umbra_image_pending_bytes",
            "Bytes the set's copy has still to move.",
            sets.iter()
                .map(|(l, s)| (l.clone(), (s.chunks_to_copy * s.chunk_bytes) as i64))
                .collect(),
        )?;
        let legs = self.legs();
        let num = |key: &'static str| -> Vec<(Labels, u64)> {
            legs.iter()
                .filter_map(|(l, v)| v[key].as_u64().map(|n| (l.clone(), n)))
                .collect()
        };
        let as_gauge = |v: Vec<(Labels, u64)>| v.into_iter().map(|(l, n)| (l, n as i64)).collect();
        gauge(
            e,
            "umbra_repl_lag_bytes",
            "Bytes written here and not yet acknowledged by the peer (primary).",
            as_gauge(num("lag_bytes")),
        )?;
        gauge(
            e,
            "umbra_repl_queue_depth_writes",
            "Writes queued on the link to the peer (primary).",
            as_gauge(num("queue_depth")),
        )?;
        gauge(
            e,
            "umbra_repl_out_of_sync_bytes",
            "Bytes recorded as differing from the peer (the scoreboard).",
            as_gauge(num("out_of_sync_bytes")),
        )?;
        counter(
            e,
            "umbra_repl_sent_bytes",
            "Bytes of writes replicated to the peer (primary).",
            num("bytes"),
        )?;
        counter(
            e,
            "umbra_repl_applied_bytes",
            "Bytes of the primary's writes applied here (secondary).",
            num("applied_bytes"),
        )?;
        gauge(
            e,
            "umbra_repl_sync_done_bytes",
            "Bytes the current or last resync copied.",
            as_gauge(num("sync_done_bytes")),
        )?;
        gauge(
            e,
            "umbra_repl_link_up",
            "1 when the link to the peer is connected.",
            legs.iter()
                .map(|(l, v)| (l.clone(), (v["link"] == "up") as i64))
                .collect(),
        )?;
        gauge(
            e,
            "umbra_repl_state",
            "1 for the replication state the leg is in (label state).",
            legs.iter()
                .map(|(l, v)| {
                    let mut l = l.clone();
                    l.push(("state", v["state"].as_str().unwrap_or_default().to_owned()));
                    (l, 1)
                })
                .collect(),
        )?;
        gauge(
            e,
            "umbra_export_serving",
            "1 when the export serves, 0 when it failed.",
            self.0
                .iter()
                .flat_map(|v| {
                    v.exports.iter().map(move |x| {
                        (
                            vec![
                                ("volume", v.volume.clone()),
                                ("export", x["kind"].as_str().unwrap_or_default().to_owned()),
                                (
                                    "listen",
                                    x["listen"].as_str().unwrap_or_default().to_owned(),
                                ),
                            ],
                            (x["state"] == "serving") as i64,
                        )
                    })
                })
                .collect(),
        )?;
        Ok(())
    }
}
