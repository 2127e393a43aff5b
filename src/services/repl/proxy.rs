//! A userspace TCP proxy that injects link faults between two replication
//! peers: one-way delay, stalls, dropped connections and partitions
//! (`tc netem` is not available everywhere our tests run). Used by the
//! fault tests and by `umbra fault-proxy` for the benchmarks.
//!
//! Each accepted connection gets two pumps (one per direction); a pump's
//! reader timestamps what it reads and its writer releases it `delay`
//! later, so the delay is one-way and adds no bandwidth limit.

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read from one side, with when they were read.
type Chunk = (Instant, Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything (after the configured delay).
    Pass,
    /// Stop forwarding; connections stay open (a hung peer or network).
    Stall,
    /// Refuse new connections and stall the existing ones.
    Partition,
}

pub struct FaultProxy {
    pub addr: String,
    target: String,
    delay_us: Arc<AtomicU64>,
    fault: Arc<Mutex<Fault>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    /// What went through, both directions, up to its capacity (tests that
    /// look at the bytes on the wire).
    captured: Mutex<Vec<u8>>,
}

/// How much [`FaultProxy::captured`] keeps.
const CAPTURE_BYTES: usize = 16 << 20;

impl FaultProxy {
    /// Listen on `listen` (port 0: any) and forward to `target`.
    pub fn start(listen: &str, target: &str) -> std::io::Result<Arc<FaultProxy>> {
        let l = TcpListener::bind(listen)?;
        l.set_nonblocking(true)?;
        let p = Arc::new(FaultProxy {
            addr: l.local_addr()?.to_string(),
            target: target.to_owned(),
            delay_us: Arc::new(AtomicU64::new(0)),
            fault: Arc::new(Mutex::new(Fault::Pass)),
            conns: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            bytes: Arc::new(AtomicU64::new(0)),
            captured: Mutex::new(Vec::new()),
        });
        let me = p.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || me.accept_loop(l))?;
        Ok(p)
    }

    pub fn set_delay(&self, one_way: Duration) {
        self.delay_us
            .store(one_way.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn set_fault(&self, f: Fault) {
        *self.fault.lock() = f;
    }

    /// Close every open connection (both ends see a reset or EOF).
    pub fn drop_connections(&self) {
        for c in self.conns.lock().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Bytes forwarded so far, both directions.
    /// The first 16 MiB that went through, both directions interleaved.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().clone()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.drop_connections();
    }

    fn accept_loop(self: Arc<Self>, l: TcpListener) {
        while !self.stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((client, _)) => {
                    if *self.fault.lock() == Fault::Partition {
                        drop(client);
                        continue;
                    }
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = TcpStream::connect(&self.target) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut c = self.conns.lock();
                        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                            c.push(a);
                            c.push(b);
                        }
                    }
                    self.pump(&client, &server);
                    self.pump(&server, &client);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn pump(self: &Arc<Self>, from: &TcpStream, to: &TcpStream) {
        let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
            return;
        };
        let (tx, rx): (Sender<Chunk>, Receiver<Chunk>) = crossbeam_channel::unbounded();
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("fault-proxy-rd".into())
            .spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                        Ok(n) => {
                            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    }
                    if me.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            });
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("fault-proxy-wr".into())
            .spawn(move || {
                for (at, data) in rx {
                    let release = at + Duration::from_micros(me.delay_us.load(Ordering::SeqCst));
                    let now = Instant::now();
                    if release > now {
                        std::thread::sleep(release - now);
                    }
                    while matches!(*me.fault.lock(), Fault::Stall | Fault::Partition) {
                        if me.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if to.write_all(&data).is_err() {
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    me.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    let mut cap = me.captured.lock();
                    let room = CAPTURE_BYTES - cap.len().min(CAPTURE_BYTES);
                    cap.extend_from_slice(&data[..data.len().min(room)]);
                }
                let _ = to.shutdown(Shutdown::Write);
            });
    }
}
