//! Real etcd for the cluster tests: Debian's `etcd` binary, members on
//! loopback ports, data in a temporary directory, killed on drop.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Member {
    pub child: Option<Child>,
    pub client: String,
}

pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

/// `GET /health` on a member's client port answers `"health":"true"`.
fn healthy(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

/// The command line of etcd member `name` of a new cluster `initial`.
fn member_args(
    name: &str,
    data_dir: &std::path::Path,
    client: &str,
    peer: &str,
    initial: &str,
) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--log-level",
        "error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Etcd {
    /// Start an etcd cluster of `n` members and wait until every client
    /// port accepts connections.
    pub fn start(n: usize) -> Etcd {
        super::require_tool("etcd");
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (super::free_port(), super::free_port()))
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let client = format!("http://127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let child = Command::new("etcd")
                .args(member_args(
                    &format!("m{i}"),
                    &dir.path().join(format!("m{i}")),
                    &client,
                    &peer,
                    &initial.join(","),
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd");
            members.push(Member {
                child: Some(child),
                client,
            });
        }
        let e = Etcd { dir, members };
        // Healthy means a leader is elected: `/health` says so.
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in &e.members {
            let addr = m.client.trim_start_matches("http://").to_owned();
            while !healthy(&addr) {
                assert!(
                    Instant::now() < deadline,
                    "etcd at {addr} did not become healthy"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        e
    }

    /// The client URLs, comma-separated (for `cluster join --etcd`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Etcd {
    /// One etcd member inside network namespace `ns`, serving clients on
    /// `ip:2379`; waits until it answers `/health` (asked with curl from
    /// inside the namespace).
    pub fn start_in_netns(ns: &str, ip: &str) -> Etcd {
        super::require_tool("etcd");
        super::require_tool("curl");
        let dir = tempfile::tempdir().unwrap();
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "etcd"])
            .args(member_args(
                "m0",
                &dir.path().join("m0"),
                &client,
                &peer,
                &format!("m0={peer}"),
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = Etcd {
            dir,
            members: vec![Member {
                child: Some(child),
                client: client.clone(),
            }],
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-s", "-m", "2"])
                .arg(format!("{client}/health"))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"") {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "etcd in {ns} at {client} did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
