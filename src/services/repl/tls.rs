//! TLS for replication connections (rustls, TLS 1.3 only).
//!
//! Who is who stays the shared secret's business, as before TLS: each
//! daemon presents a self-signed certificate made at start, the dialer
//! accepts any certificate (after checking the handshake signature, so the
//! listener holds the certificate's key), and then the HMAC handshake of
//! `wire::handshake_with` runs inside TLS with the session's exported
//! keying material (RFC 5705/8446 exporter, label `EXPORTER-umbra-repl`)
//! in every proof. A man in the middle who terminates TLS toward each side
//! has two sessions with different exporters, so neither side's proof
//! verifies on the other: the secret authenticates the peer *and* this TLS
//! session. Why not certificates: a PKI per pair of sites is one more
//! thing to issue, rotate and get wrong, and the secret is already
//! configured (`repl peer add --secret-file`) and checked.
//!
//! When: the dialer uses TLS for a peer that is not on loopback, or always
//! with `UMBRA_REPL_TLS=always` (`never` turns it off, e.g. to measure its
//! cost). A listener tells a TLS connection by its first byte (a TLS
//! record starts 0x16, a replication frame with `U` of `UMRP`) and refuses
//! a plaintext one from off the host unless the policy is `never`, and
//! from anywhere under `always`.
//!
//! The rest of the replication code keeps its blocking `TcpStream`s: the
//! TLS session is run by a tunnel thread (`crate::tls`), one per link.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig};
use rustls::{ServerConnection, SignatureScheme};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};

/// Bytes of exported keying material bound into the HMAC proofs.
pub const BINDING_BYTES: usize = 32;
const EXPORTER_LABEL: &[u8] = b"EXPORTER-umbra-repl";
pub use crate::tls::TLS_RECORD_HANDSHAKE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// TLS toward peers off the host; plaintext only on loopback.
    Auto,
    Always,
    Never,
}

/// The policy of this process (`UMBRA_REPL_TLS`: auto, always, never).
pub fn policy() -> Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    *P.get_or_init(|| match std::env::var("UMBRA_REPL_TLS").as_deref() {
        Ok("always") => Policy::Always,
        Ok("never") => Policy::Never,
        Ok("auto") | Err(_) => Policy::Auto,
        Ok(other) => {
            log::error!("UMBRA_REPL_TLS={other:?}: expected auto, always or never; using auto");
            Policy::Auto
        }
    })
}

/// Whether a connection to (or from) `peer` must be encrypted.
pub fn required_for(peer: &SocketAddr) -> bool {
    match policy() {
        Policy::Always => true,
        Policy::Never => false,
        Policy::Auto => !peer.ip().is_loopback(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config() -> io::Result<Arc<ServerConfig>> {
    static C: OnceLock<Result<Arc<ServerConfig>, String>> = OnceLock::new();
    C.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["umbra-replication".to_owned()])
            .map_err(|e| format!("generating the TLS certificate: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(io::Error::other)
}

pub(crate) fn client_config() -> io::Result<Arc<ClientConfig>> {
    static C: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    C.get_or_init(|| {
        let p = provider();
        Ok(Arc::new(
            ClientConfig::builder_with_provider(p.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SecretAuthenticates(p)))
                .with_no_client_auth(),
        ))
    })
    .clone()
    .map_err(io::Error::other)
}

/// Accepts any certificate whose key signed the handshake: the shared
/// secret, bound to the session, authenticates the peer (module doc).
#[derive(Debug)]
struct SecretAuthenticates(Arc<CryptoProvider>);

impl ServerCertVerifier for SecretAuthenticates {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: never asked.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Run the TLS handshake as the dialer on `tcp`; returns the plaintext
/// stream and the session binding for the HMAC handshake.
pub fn client(tcp: TcpStream) -> io::Result<(TcpStream, [u8; BINDING_BYTES])> {
    let name = ServerName::try_from("umbra-replication").expect("a valid DNS name");
    let conn = ClientConnection::new(client_config()?, name).map_err(io::Error::other)?;
    crate::tls::establish(conn.into(), tcp, binding)
}

/// Run the TLS handshake as the listener on `tcp`.
pub fn server(tcp: TcpStream) -> io::Result<(TcpStream, [u8; BINDING_BYTES])> {
    let conn = ServerConnection::new(server_config()?).map_err(io::Error::other)?;
    crate::tls::establish(conn.into(), tcp, binding)
}

/// The session's exported keying material, bound into the proofs.
fn binding(conn: &Connection) -> io::Result<[u8; BINDING_BYTES]> {
    conn.export_keying_material([0u8; BINDING_BYTES], EXPORTER_LABEL, None)
        .map_err(io::Error::other)
}
