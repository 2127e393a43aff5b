//! Real NBD clients against the real daemon: qemu-img, nbdcopy, fio's nbd
//! engine with verification, and the Linux block layer through nbdfuse +
//! losetup with ext4 on top. Missing tools fail the test (CI installs them).

mod common;

use common::{require_root, require_tool, sh, write_random_file, Daemon, NbdLoop};
use std::process::Command;

#[test]
fn qemu_img_convert_and_compare_round_trip() {
    require_tool("qemu-img");
    let d = Daemon::start();
    d.ok(&["volume", "create", "img", "--size", "32M"]);
    let uri = d.export_nbd("img");
    let src = d.dir.path().join("src.raw");
    write_random_file(&src, 32 << 20, 1);
    sh(&format!(
        "qemu-img convert -n -f raw -O raw {} '{uri}'",
        src.display()
    ));
    let out = sh(&format!(
        "qemu-img compare -f raw -F raw {} '{uri}'",
        src.display()
    ));
    assert!(out.contains("Images are identical"), "{out}");
    // And back out again through a qcow2 conversion.
    let q = d.dir.path().join("copy.qcow2");
    sh(&format!(
        "qemu-img convert -f raw -O qcow2 '{uri}' {}",
        q.display()
    ));
    let out = sh(&format!(
        "qemu-img compare -f raw -F qcow2 {} {}",
        src.display(),
        q.display()
    ));
    assert!(out.contains("Images are identical"), "{out}");
}

#[test]
fn nbdcopy_in_and_out_over_tcp_and_unix_socket() {
    require_tool("nbdcopy");
    require_tool("nbdinfo");
    let d = Daemon::start();
    d.ok(&["volume", "create", "a", "--size", "16M"]);
    d.ok(&["volume", "create", "b", "--size", "16M", "--engine", "sync"]);
    let uri_a = d.export_nbd("a");
    let sock = d.dir.path().join("b.sock");
    d.ok(&[
        "export",
        "nbd",
        "b",
        "--listen",
        &format!("unix:{}", sock.display()),
    ]);
    let uri_b = d.uri_of("b");
    let src = d.dir.path().join("src.raw");
    write_random_file(&src, 16 << 20, 2);
    sh(&format!("nbdcopy {} '{uri_a}'", src.display()));
    sh(&format!("nbdcopy '{uri_a}' '{uri_b}'"));
    let out = d.dir.path().join("out.raw");
    sh(&format!("nbdcopy '{uri_b}' {}", out.display()));
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&out).unwrap());
    let info = sh(&format!("nbdinfo --json '{uri_b}'"));
    assert!(info.contains("\"export-size\": 16777216"), "{info}");
    // A second volume on the same address: one server, two export names.
    d.ok(&["volume", "create", "c", "--size", "1M"]);
    d.ok(&["export", "nbd", "c", "--listen", &d.addr_of("a")]);
    let list = sh(&format!("nbdinfo --list 'nbd://{}'", d.addr_of("a")));
    assert!(
        list.contains("export=\"a\"") && list.contains("export=\"c\""),
        "{list}"
    );
}

fn fio_verify(uri: &str, rw: &str, bs: &str) {
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            "--size=64M",
            "--iodepth=32",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--do_verify=1",
            "--verify_fatal=1",
            "--fsync=64",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("err= 0"),
        "fio {rw} {bs} on {uri} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Buffered file: requests run inline on the connection thread.
#[test]
fn fio_nbd_engine_with_crc32c_verification() {
    require_tool("fio");
    let d = Daemon::start();
    d.ok(&["volume", "create", "f", "--size", "64M"]);
    let uri = d.export_nbd("f");
    for (rw, bs) in [("randwrite", "4k"), ("write", "1m"), ("randrw", "16k")] {
        fio_verify(&uri, rw, bs);
    }
}

/// O_DIRECT through io_uring: every request goes to the offload workers.
#[test]
fn fio_verification_on_an_o_direct_io_uring_volume() {
    require_tool("fio");
    let d = Daemon::start();
    d.ok(&["volume", "create", "fd", "--size", "64M", "--direct"]);
    let info = d.json(&["volume", "info", "fd"]);
    assert!(
        info["backend"].as_str().unwrap().contains("Uring"),
        "{info}"
    );
    let uri = d.export_nbd("fd");
    for (rw, bs) in [("randwrite", "4k"), ("randrw", "64k"), ("randwrite", "1k")] {
        fio_verify(&uri, rw, bs);
    }
}

/// The cache switched on and off over and over while fio writes, reads and
/// verifies through NBD: the stack changes under live I/O, nothing is lost.
#[test]
fn fio_verification_while_the_cache_is_switched_on_and_off() {
    require_tool("fio");
    let d = Daemon::start();
    d.ok(&["volume", "create", "t", "--size", "64M"]);
    let uri = d.export_nbd("t");
    let mut fio = Command::new("fio")
        .args([
            "--name=toggle",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randrw",
            "--bs=4k",
            "--size=64M",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--do_verify=1",
            "--verify_fatal=1",
            "--loops=2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut flips = 0;
    while fio.try_wait().unwrap().is_none() {
        d.ok(&["cache", "enable", "t", "--size", "4M"]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        d.ok(&["cache", "disable", "t"]);
        flips += 1;
    }
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("err= 0"), "{text}");
    assert!(flips > 0);
}

#[test]
fn several_clients_at_once_see_each_others_writes_after_flush() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "8M"]);
    d.export_nbd("m");
    let addr = d.addr_of("m");
    let handles: Vec<_> = (0..6u8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = common::nbd::NbdClient::connect(&addr, "m");
                for j in 0..64u64 {
                    let off = (j * 6 + i as u64) * 4096;
                    assert_eq!(c.write(off, &[i + 1; 4096], 0), 0);
                }
                assert_eq!(c.flush(), 0);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut c = common::nbd::NbdClient::connect(&addr, "m");
    for k in 0..64 * 6u64 {
        assert_eq!(
            c.read(k * 4096, 4096).unwrap(),
            vec![(k % 6) as u8 + 1; 4096]
        );
    }
}

#[test]
fn ext4_through_nbdfuse_and_losetup_mount_write_remount_verify() {
    require_root();
    for t in [
        "nbdfuse",
        "losetup",
        "mkfs.ext4",
        "mount",
        "fusermount3",
        "sha256sum",
    ] {
        require_tool(t);
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "fs", "--size", "128M"]);
    let uri = d.export_nbd("fs");
    let mnt = d.dir.path().join("mnt");
    let mut l = NbdLoop::attach(&uri, &d.dir.path().join("fuse"), false);
    let loopdev = l.dev.clone();
    sh(&format!("mkfs.ext4 -q -F {loopdev}"));
    l.mount(&mnt, "rw");
    for i in 0..20 {
        write_random_file(&mnt.join(format!("file{i}")), 100_000 + i * 4093, i as u64);
    }
    let sums = sh(&format!("cd {} && sha256sum file* ", mnt.display()));
    sh("sync");
    l.umount(&mnt);
    l.mount(&mnt, "rw");
    let again = sh(&format!("cd {} && sha256sum file*", mnt.display()));
    assert_eq!(sums, again);
    l.umount(&mnt);
    sh(&format!("fsck.ext4 -n -f {loopdev}"));
}

/// The allocation map (`NBD_CMD_BLOCK_STATUS`, `base:allocation`, over
/// structured replies): nbdinfo and qemu-img see the holes of a sparse
/// volume, a qcow2 conversion and nbdcopy skip them and copy the data
/// exactly; a shadow (whose reads may come from its master) claims no hole;
/// a client that negotiated nothing gets EINVAL for the command.
#[test]
fn block_status_maps_holes_for_nbdinfo_qemu_img_and_nbdcopy() {
    require_tool("nbdinfo");
    require_tool("qemu-img");
    require_tool("nbdcopy");
    let d = Daemon::start();
    d.ok(&["volume", "create", "sp", "--size", "64M"]);
    let uri = d.export_nbd("sp");
    let mut c = common::nbd::NbdClient::connect(&d.addr_of("sp"), "sp");
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8 + 1).collect();
    assert_eq!(c.write(16 << 20, &data, 0), 0);
    assert_eq!(c.write(40 << 20, &data[..4096], 0), 0);
    assert_eq!(c.flush(), 0);
    // Without structured replies and a metadata context: refused.
    let h = c.send(7, 0, 0, 4096, &[]);
    assert_eq!(c.reply(None).unwrap(), (h, 22));
    c.disconnect();

    let map = sh(&format!("nbdinfo --map '{uri}'"));
    let runs: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let (mib, hole) = (1u64 << 20, 3);
    assert_eq!(
        runs,
        vec![
            (0, 16 * mib, hole),
            (16 * mib, mib, 0),
            (17 * mib, 23 * mib, hole),
            (40 * mib, 4096, 0),
            (40 * mib + 4096, 24 * mib - 4096, hole),
        ],
        "{map}"
    );
    let qmap = sh(&format!("qemu-img map --output=json '{uri}'"));
    let entries: serde_json::Value = serde_json::from_str(&qmap).unwrap();
    let data_bytes: u64 = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data_bytes, mib + 4096, "{qmap}");

    let q = d.dir.path().join("sp.qcow2");
    sh(&format!(
        "qemu-img convert -O qcow2 '{uri}' {}",
        q.display()
    ));
    let out = sh(&format!(
        "qemu-img compare -F qcow2 '{uri}' {}",
        q.display()
    ));
    assert!(out.contains("Images are identical"), "{out}");
    assert!(
        std::fs::metadata(&q).unwrap().len() < 4 * mib,
        "the qcow2 copy skipped the holes"
    );
    let raw = d.dir.path().join("sp.raw");
    sh(&format!("nbdcopy '{uri}' {}", raw.display()));
    let copy = std::fs::read(&raw).unwrap();
    assert_eq!(copy.len() as u64, 64 * mib);
    assert!(
        copy[16 << 20..17 << 20] == data[..] && copy[40 << 20..(40 << 20) + 4096] == data[..4096]
    );
    assert!(copy[..16 << 20].iter().all(|&b| b == 0));

    // A dependent shadow reads unchanged chunks from its master: all data.
    d.ok(&[
        "image",
        "enable",
        "pit",
        "--master",
        "sp",
        "--shadow",
        "sp-pit",
        "--mode",
        "dependent",
    ]);
    let shadow = d.export_nbd("sp-pit");
    let smap = sh(&format!("nbdinfo --map '{shadow}'"));
    assert_eq!(smap.lines().count(), 1, "{smap}");
    assert!(smap.contains(" 0  data"), "{smap}");
}

/// A CA and a server certificate for 127.0.0.1 in `dir`, laid out as
/// qemu and libnbd expect: ca-cert.pem, server-cert.pem, server-key.pem.
fn make_pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "umbra test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

/// NBD over TLS (NBD_OPT_STARTTLS): qemu-img writes an image through it
/// and nbdinfo and nbdcopy read it back, verifying the server against its
/// CA; a client that does not start TLS gets nothing; a second export on
/// that listener must say TLS too.
#[test]
fn nbd_over_tls_with_qemu_img_nbdinfo_and_nbdcopy() {
    require_tool("qemu-img");
    require_tool("nbdinfo");
    require_tool("nbdcopy");
    let d = Daemon::start();
    let pki = d.dir.path().join("pki");
    make_pki(&pki);
    d.ok(&["volume", "create", "sec", "--size", "16M"]);
    d.ok(&["volume", "create", "other", "--size", "1M"]);
    let pki_s = pki.to_str().unwrap();
    d.ok(&[
        "export",
        "nbd",
        "sec",
        "--listen",
        "127.0.0.1:0",
        "--tls-certificates",
        pki_s,
    ]);
    let uri = d.uri_of("sec");
    assert!(uri.starts_with("nbds://"), "{uri}");
    let addr = d.addr_of("sec");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let src = d.dir.path().join("src.raw");
    write_random_file(&src, 16 << 20, 5);
    sh(&format!(
        "qemu-img convert -n -f raw {} --object tls-creds-x509,id=tls0,dir={pki_s},endpoint=client \
         --target-image-opts driver=nbd,host={host},port={port},export=sec,tls-creds=tls0",
        src.display()
    ));
    let tls_uri = format!("{uri}?tls-certificates={pki_s}");
    let info = sh(&format!("nbdinfo --json '{tls_uri}'"));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["exports"][0]["export-size"], 16 << 20, "{info}");
    let back = d.dir.path().join("back.raw");
    sh(&format!("nbdcopy '{tls_uri}' {}", back.display()));
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap(),
        "the data came back through TLS"
    );
    // Without TLS: refused before any export is chosen.
    let plain = Command::new("nbdinfo")
        .arg(format!("nbd://{addr}/sec"))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "a plaintext client got in");
    // One listener, one rule.
    let e = d.fails(&["export", "nbd", "other", "--listen", &addr]);
    assert!(e.contains("TLS only"), "{e}");
    d.ok(&[
        "export",
        "nbd",
        "other",
        "--listen",
        &addr,
        "--tls-certificates",
        pki_s,
    ]);
}
