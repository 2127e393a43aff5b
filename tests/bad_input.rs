//! Bad input on the admin socket and the NBD port: random bytes, truncated
//! frames, huge lengths, wrong magic, out-of-range requests. The daemon stays
//! up, other clients are unaffected, and the data is untouched.

mod common;

use common::nbd::{NbdClient, CMD_READ, CMD_WRITE, FLAG_FUA};
use common::Daemon;
use rand::{Rng, RngCore, SeedableRng};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn admin_exchange(sock: &std::path::Path, payload: &[u8]) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(payload);
    let _ = s.shutdown(std::net::Shutdown::Write);
    BufReader::new(s)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).expect("every reply line is JSON"))
        .collect()
}

/// A client that keeps asking for status while the others misbehave.
fn bystander(d: &Daemon) -> (Arc<AtomicBool>, std::thread::JoinHandle<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sock = d.socket();
    let s2 = stop.clone();
    let h = std::thread::spawn(move || {
        let mut c = umbra::control::admin::Client::connect(&sock).unwrap();
        let mut n = 0;
        while !s2.load(Ordering::Relaxed) {
            let r = c.call("status", serde_json::json!({})).unwrap();
            assert!(r.ok, "bystander status failed: {r:?}");
            n += 1;
        }
        n
    });
    (stop, h)
}

#[test]
fn admin_socket_survives_garbage_and_answers_with_errors() {
    let mut d = Daemon::start();
    let (stop, by) = bystander(&d);
    let sock = d.socket();

    let r = admin_exchange(&sock, b"this is not json\n");
    assert_eq!(r[0]["ok"], false);
    assert_eq!(r[0]["error"]["code"], "bad_request");

    let r = admin_exchange(&sock, b"{\"v\":1,\"id\":5,\"op\":\"volume.explode\"}\n");
    assert_eq!(r[0]["error"]["code"], "unknown_op");
    assert_eq!(r[0]["id"], 5);

    let r = admin_exchange(&sock, b"{\"v\":99,\"op\":\"status\"}\n");
    assert_eq!(r[0]["error"]["code"], "unsupported_version");

    let r = admin_exchange(
        &sock,
        b"{\"v\":1,\"op\":\"volume.create\",\"args\":{\"name\":7}}\n",
    );
    assert_eq!(r[0]["error"]["code"], "invalid");

    let r = admin_exchange(
        &sock,
        b"{\"v\":1,\"op\":\"volume.create\",\"args\":{\"name\":\"x\",\"size_bytes\":-1}}\n",
    );
    assert_eq!(r[0]["error"]["code"], "invalid");

    // Several requests on one connection, one bad in the middle.
    let r = admin_exchange(
        &sock,
        b"{\"v\":1,\"id\":1,\"op\":\"status\"}\n{oops\n{\"v\":1,\"id\":3,\"op\":\"volume.list\"}\n",
    );
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[0]["ok"].clone(), r[1]["ok"].clone(), r[2]["ok"].clone()),
        (true.into(), false.into(), true.into())
    );

    // A line longer than the limit: error reply, then the connection ends.
    let huge = vec![b'x'; (1 << 20) + 10];
    let r = admin_exchange(&sock, &huge);
    assert_eq!(r[0]["error"]["code"], "too_large");

    // Random bytes, with and without newlines, many times.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..200 {
        let len = rng.gen_range(0..4096);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        for r in admin_exchange(&sock, &junk) {
            assert_eq!(r["ok"], false);
        }
    }
    // A client that connects and vanishes mid-line.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"{\"v\":1,\"op\":\"sta").unwrap();
    }

    stop.store(true, Ordering::Relaxed);
    assert!(by.join().unwrap() > 0);
    assert!(d.alive());
    d.ok(&["status"]);
    assert_eq!(d.json(&["volume", "list"]).as_array().unwrap().len(), 1);
}

fn raw_tcp(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn nbd_port_survives_garbage_and_bad_requests() {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "n", "--size", "4M"]);
    d.export_nbd("n");
    let addr = d.addr_of("n");

    // A well-behaved client holds a known pattern throughout.
    let mut good = NbdClient::connect(&addr, "n");
    assert_eq!(good.write(0, &[0xAB; 65536], FLAG_FUA), 0);

    // Random bytes before and during the handshake.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..100 {
        let mut junk = vec![0u8; rng.gen_range(0..2048)];
        rng.fill_bytes(&mut junk);
        raw_tcp(&addr, &junk);
    }
    // Fixed newstyle flag, then a wrong option magic; then a huge option.
    let mut frame = 1u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&0xdead_beef_u64.to_be_bytes());
    raw_tcp(&addr, &frame);
    let mut frame = 1u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    frame.extend_from_slice(&7u32.to_be_bytes());
    frame.extend_from_slice(&u32::MAX.to_be_bytes());
    raw_tcp(&addr, &frame);
    // NBD_OPT_GO for an export that does not exist: an error reply that
    // names it, and the client may try again on the same connection.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
        frame.extend_from_slice(&7u32.to_be_bytes());
        frame.extend_from_slice(&(4 + 5 + 2u32).to_be_bytes());
        frame.extend_from_slice(&5u32.to_be_bytes());
        frame.extend_from_slice(b"ghost");
        frame.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&frame).unwrap();
        let mut head = [0u8; 20];
        s.read_exact(&mut head).unwrap();
        let reply_type = u32::from_be_bytes(head[12..16].try_into().unwrap());
        assert_eq!(reply_type, (1 << 31) | 6, "NBD_REP_ERR_UNKNOWN");
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
        let mut msg = vec![0; len];
        s.read_exact(&mut msg).unwrap();
        assert!(String::from_utf8_lossy(&msg).contains("ghost"));
    }

    // Transmission-phase errors that keep the connection.
    let mut c = NbdClient::connect(&addr, "n");
    assert_eq!(c.read(4 << 20, 512), Err(22), "read past the end: EINVAL");
    assert_eq!(
        c.read(u64::MAX - 10, 512),
        Err(22),
        "offset overflow: EINVAL"
    );
    let h = c.send(CMD_READ, 0, 0, 64 << 20, &[]);
    assert_eq!(c.reply(None).unwrap(), (h, 22), "oversized read: EINVAL");
    assert_eq!(
        c.write((4 << 20) - 100, &[1; 512], 0),
        22,
        "write past the end"
    );
    let h = c.send(99, 0, 0, 0, &[]);
    assert_eq!(c.reply(None).unwrap(), (h, 22), "unknown command");
    let h = c.send(CMD_WRITE, 0x4000, 0, 512, &[9; 512]);
    assert_eq!(c.reply(None).unwrap(), (h, 22), "unknown flag");
    assert_eq!(c.read(0, 4096).unwrap(), vec![0xAB; 4096], "still usable");

    // Frames that drop the client: a bad magic; a huge write length.
    let mut c = NbdClient::connect(&addr, "n");
    c.s.write_all(&[0u8; 28]).unwrap();
    assert!(c.reply(None).is_err(), "bad magic drops the connection");
    let mut c = NbdClient::connect(&addr, "n");
    c.send(CMD_WRITE, 0, 0, u32::MAX, &[]);
    assert!(c.reply(None).is_err(), "a 4 GiB write drops the connection");
    // A truncated frame, then the client vanishes.
    let mut c = NbdClient::connect(&addr, "n");
    c.s.write_all(&0x2560_9513u32.to_be_bytes()).unwrap();
    drop(c);
    // A truncated write payload, then the client vanishes.
    let mut c = NbdClient::connect(&addr, "n");
    c.send(CMD_WRITE, 0, 0, 65536, &[0x11; 100]);
    drop(c);

    // The good client never noticed; the data was never touched.
    assert_eq!(good.read(0, 65536).unwrap(), vec![0xAB; 65536]);
    assert_eq!(good.flush(), 0);
    assert!(d.alive());
    d.ok(&["status"]);
}

/// Read-only operations refuse arguments they do not take, as the protocol
/// says (unknown fields are refused), instead of ignoring them.
#[test]
fn read_only_operations_refuse_junk_arguments() {
    let d = Daemon::start();
    let mut c = umbra::control::admin::Client::connect(&d.socket()).unwrap();
    for op in [
        "status",
        "volume.list",
        "export.list",
        "image.list",
        "image.group.list",
        "hook.list",
        "repl.list",
        "repl.status",
        "cluster.status",
    ] {
        for junk in [serde_json::json!({"bogus": 1}), serde_json::json!(["db"])] {
            let r = c.call(op, junk.clone()).unwrap();
            assert!(!r.ok, "{op} accepted {junk}");
            let e = r.error.unwrap();
            assert!(e.message.contains(op), "{op}: {}", e.message);
        }
        // Without arguments (or an empty object) it answers.
        assert!(c.call(op, serde_json::json!({})).unwrap().ok, "{op}");
    }
}

/// Threads of the daemon right now.
fn threads(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .count()
}

/// Connections to the replication port that never authenticate cost a
/// bounded number of threads and are dropped after the handshake timeout;
/// a real peer works once they are gone.
#[test]
fn unauthenticated_replication_connections_are_bounded_and_time_out() {
    let key = "preauth-secret-0123456789abcdef";
    let [(a, a_addr), (b, b_addr)] = common::repl::mesh(["a", "b"], key);
    let before = threads(&a);
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&a_addr).ok())
        .collect();
    // The listener has accepted every one once the last, far beyond the
    // bound, is closed at accept.
    let last = idle.last().unwrap();
    last.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut b = [0u8; 1];
        match (&*last).read(&mut b) {
            Ok(0) => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "the listener never got to the last connection"
            ),
        }
    }
    let during = threads(&a);
    assert!(
        during <= before + 16 + 2,
        "{} idle connections cost {} threads (from {before})",
        idle.len(),
        during - before
    );
    // The daemon drops them once their handshake time is up.
    let mut s = idle.into_iter().next().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    // The first connection was accepted (not closed at once): it is held
    // for the handshake timeout (5 s), no longer.
    assert!(
        t0.elapsed() > Duration::from_secs(3) && t0.elapsed() < Duration::from_secs(10),
        "dropped after {:?}",
        t0.elapsed()
    );
    drop(s);
    // A real peer gets in.
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "4M"]);
    }
    a.ok(&common::repl::enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "sync",
        &["--no-sync", "--timeout", "2s"],
    ));
    common::repl::wait_for(&a, "s", "settled", common::repl::settled, 30);
}
