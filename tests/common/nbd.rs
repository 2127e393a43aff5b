//! A minimal NBD client speaking the raw protocol, for tests that need to
//! send exactly the bytes they choose (bad frames, precise flush/ack
//! tracking). Real-client tests use qemu-img, nbdcopy, fio and nbdfuse.
//! The constants are restated from the protocol on purpose rather than
//! imported from `umbra::export::nbd::proto`: an independent copy is what
//! lets this client catch a wrong constant in the server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const FLAG_FUA: u16 = 1;

pub struct NbdClient {
    pub s: TcpStream,
    pub size: u64,
    next_handle: u64,
}

fn u16be(s: &mut TcpStream) -> u16 {
    let mut b = [0; 2];
    s.read_exact(&mut b).unwrap();
    u16::from_be_bytes(b)
}
fn u32be(s: &mut TcpStream) -> u32 {
    let mut b = [0; 4];
    s.read_exact(&mut b).unwrap();
    u32::from_be_bytes(b)
}
fn u64be(s: &mut TcpStream) -> u64 {
    let mut b = [0; 8];
    s.read_exact(&mut b).unwrap();
    u64::from_be_bytes(b)
}

impl NbdClient {
    /// Fixed-newstyle handshake and NBD_OPT_GO for `name`.
    pub fn connect(addr: &str, name: &str) -> NbdClient {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        assert_eq!(u64be(&mut s), 0x4e42_444d_4147_4943);
        assert_eq!(u64be(&mut s), 0x4948_4156_454f_5054);
        let _flags = u16be(&mut s);
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle + no zeroes
        let mut opt = Vec::new();
        opt.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
        opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        let data_len = 4 + name.len() + 2;
        opt.extend_from_slice(&(data_len as u32).to_be_bytes());
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt).unwrap();
        let mut size = None;
        loop {
            assert_eq!(u64be(&mut s), 0x0003_e889_0455_65a9, "option reply magic");
            let _opt = u32be(&mut s);
            let rtype = u32be(&mut s);
            let len = u32be(&mut s) as usize;
            let mut data = vec![0; len];
            s.read_exact(&mut data).unwrap();
            match rtype {
                1 => break, // ACK
                3 => {
                    if u16::from_be_bytes([data[0], data[1]]) == 0 {
                        size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                    }
                }
                t => panic!(
                    "NBD_OPT_GO failed: reply {t:#x}: {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
        NbdClient {
            s,
            size: size.expect("server sent NBD_INFO_EXPORT"),
            next_handle: 1,
        }
    }

    pub fn send(&mut self, cmd: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
        handle
    }

    /// Read one simple reply: (handle, error). A read's data is read into
    /// `data` when the reply is a success.
    pub fn reply(&mut self, data: Option<&mut [u8]>) -> std::io::Result<(u64, u32)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        if err == 0 {
            if let Some(d) = data {
                self.s.read_exact(d)?;
            }
        }
        Ok((handle, err))
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        let h = self.send(CMD_WRITE, flags, offset, data.len() as u32, data);
        let (rh, err) = self.reply(None).unwrap();
        assert_eq!(rh, h);
        err
    }

    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, u32> {
        let h = self.send(CMD_READ, 0, offset, len as u32, &[]);
        let mut buf = vec![0; len];
        let (rh, err) = self.reply(Some(&mut buf)).unwrap();
        assert_eq!(rh, h);
        if err == 0 {
            Ok(buf)
        } else {
            Err(err)
        }
    }

    pub fn flush(&mut self) -> u32 {
        let h = self.send(CMD_FLUSH, 0, 0, 0, &[]);
        let (rh, err) = self.reply(None).unwrap();
        assert_eq!(rh, h);
        err
    }

    pub fn disconnect(mut self) {
        self.send(CMD_DISC, 0, 0, 0, &[]);
    }
}
