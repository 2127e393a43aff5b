//! Hosts in network namespaces on two bridges: A, B and C at 10.78.0.1-3
//! on the data network (replication, NBD clients) and at 10.79.0.1-3 on
//! the control network (etcd); the switch namespace S holds both bridges
//! (at 10.78.0.254 and 10.79.0.254, where etcd and clients run). A host's
//! link to either network is cut or restored at its switch port.

/// The switch namespace's own address on the data bridge.
pub const SWITCH_IP: &str = "10.78.0.254";

/// The switch namespace's address on the control bridge: an etcd here is
/// cut from a host by [`Switch::control_port`] while the host still
/// reaches its peers.
pub const CONTROL_IP: &str = "10.79.0.254";

/// Host `h`'s address (A, B, C).
pub fn host_ip(h: &str) -> String {
    let i = ["A", "B", "C"]
        .iter()
        .position(|x| *x == h)
        .expect("A, B or C")
        + 1;
    format!("10.78.0.{i}")
}

fn ip(cmd: &str) {
    super::sh(&format!("ip {cmd} && echo ok"));
}

/// Three namespaces A, B, C on one bridge (in a fourth, the switch), so a
/// host's link can be cut at the switch port.
pub struct Switch {
    tag: u32,
}

impl Switch {
    pub fn new() -> Switch {
        // One per test process and switch: tests of one binary run side by
        // side, each with its own namespaces and links.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 10;
        let tag = std::process::id() % 10_000 * 10 + n;
        let s = Switch { tag };
        s.cleanup();
        let sw = s.ns("S");
        ip(&format!("netns add {sw}"));
        ip(&format!("-n {sw} link add br0 type bridge"));
        ip(&format!("-n {sw} link set br0 up"));
        // The switch is a host too (etcd, clients): 10.78.0.254.
        ip(&format!("-n {sw} addr add {SWITCH_IP}/24 dev br0"));
        ip(&format!("-n {sw} link add br1 type bridge"));
        ip(&format!("-n {sw} link set br1 up"));
        ip(&format!("-n {sw} addr add {CONTROL_IP}/24 dev br1"));
        ip(&format!("-n {sw} link set lo up"));
        for (i, h) in ["A", "B", "C"].iter().enumerate() {
            let ns = s.ns(h);
            ip(&format!("netns add {ns}"));
            ip(&format!(
                "link add vh{h}{tag} netns {ns} type veth peer name vs{h}{tag} netns {sw}"
            ));
            ip(&format!(
                "-n {ns} addr add 10.78.0.{}/24 dev vh{h}{tag}",
                i + 1
            ));
            ip(&format!("-n {ns} link set vh{h}{tag} up"));
            ip(&format!("-n {ns} link set lo up"));
            ip(&format!("-n {sw} link set vs{h}{tag} master br0"));
            ip(&format!("-n {sw} link set vs{h}{tag} up"));
            ip(&format!(
                "link add ch{h}{tag} netns {ns} type veth peer name cs{h}{tag} netns {sw}"
            ));
            ip(&format!(
                "-n {ns} addr add 10.79.0.{}/24 dev ch{h}{tag}",
                i + 1
            ));
            ip(&format!("-n {ns} link set ch{h}{tag} up"));
            ip(&format!("-n {sw} link set cs{h}{tag} master br1"));
            ip(&format!("-n {sw} link set cs{h}{tag} up"));
        }
        s
    }

    pub fn ns(&self, h: &str) -> String {
        format!("um{h}{}", self.tag)
    }

    pub fn port(&self, h: &str, up: bool) {
        ip(&format!(
            "-n {} link set vs{h}{} {}",
            self.ns("S"),
            self.tag,
            if up { "up" } else { "down" }
        ));
    }

    /// Cut (or restore) host `h`'s link to the control network only.
    pub fn control_port(&self, h: &str, up: bool) {
        ip(&format!(
            "-n {} link set cs{h}{} {}",
            self.ns("S"),
            self.tag,
            if up { "up" } else { "down" }
        ));
    }

    fn cleanup(&self) {
        for h in ["A", "B", "C", "S"] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Move the calling thread into network namespace `ns` (one made by `ip
/// netns add`); the processes it spawns start there too.
pub fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace exists");
    // SAFETY: setns(2) with an open namespace file and CLONE_NEWNET only
    // changes this thread's network namespace; no memory is involved.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}
