//! The replication protocol's parsers: frames read from a stream, the
//! WRITE frame and ACK payloads, the batch peek the secondary uses, the
//! JSON control requests, and the authenticating handshake against an
//! in-memory peer that sends the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use umbra::services::repl::requests::PeerRequest;
use umbra::services::repl::wire::{self, Role};

/// A peer that sends `input` and swallows what it is told.
struct Peer<'a> {
    input: &'a [u8],
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    for _ in 0..64 {
        let Ok(f) = wire::read_frame(&mut r) else {
            break;
        };
        if let Ok(w) = wire::WriteFrame::decode(f.payload.clone()) {
            // What decodes encodes back to the same frame.
            let again = wire::WriteFrame::decode(w.encode()).expect("re-decodes");
            assert_eq!(again.encode(), w.encode());
        }
        let _ = wire::decode_ack(&f.payload);
        let _ = wire::peek_writes(&f.payload);
        let _ = wire::peek_write_group(&f.payload);
        let _ = serde_json::from_slice::<PeerRequest>(&f.payload);
    }
    for role in [Role::Dialer, Role::Listener] {
        let mut p = Peer { input: data };
        let _ = wire::handshake_with(
            &mut p,
            role,
            "fuzz",
            &|_| Some(b"a shared secret".to_vec()),
            &[],
        );
    }
});
