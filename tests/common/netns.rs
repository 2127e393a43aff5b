//! Hosts in network namespaces on one bridge: A, B and C at 10.78.0.1-3,
//! the switch namespace S (the bridge, at 10.78.0.254, where etcd and
//! clients run), and each host's link cut or restored at its switch port.

/// The switch namespace's own address on the bridge.
pub const SWITCH_IP: &str = "10.78.0.254";

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
        let tag = std::process::id() % 100_000;
        let s = Switch { tag };
        s.cleanup();
        let sw = s.ns("S");
        ip(&format!("netns add {sw}"));
        ip(&format!("-n {sw} link add br0 type bridge"));
        ip(&format!("-n {sw} link set br0 up"));
        // The switch is a host too (etcd, clients): 10.78.0.254.
        ip(&format!("-n {sw} addr add {SWITCH_IP}/24 dev br0"));
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
