//! The control plane: the daemon, its admin socket, the configuration
//! manager and the event stream. Control handles live here; I/O threads
//! only ever hold `Arc<Volume>` and never wait on a control-plane lock.

pub mod admin;
pub mod config;
pub mod daemon;
pub mod events;
pub mod hooks;
pub mod metrics;

use std::path::PathBuf;

/// Default data directory, relative to where `umbra serve` starts.
pub const DEFAULT_DATA_DIR: &str = "umbra-data";
/// The admin socket's file name inside the data directory.
pub const SOCKET_FILE: &str = "umbra.sock";

/// `UMBRA_DATA_DIR`, or `./umbra-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("UMBRA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Object names (volumes, and later sets and groups): 1 to 64 characters
/// from `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`. They appear in
/// file names, NBD export names and CLI arguments, so nothing fancier.
pub fn validate_name(name: &str) -> Result<(), String> {
    const MAX_NAME_CHARS: usize = 64;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(format!(
            "name {name:?} must be 1 to {MAX_NAME_CHARS} characters"
        ));
    }
    if name.starts_with(['.', '-']) || !name.chars().all(ok_char) {
        return Err(format!(
            "name {name:?} may only use letters, digits, '.', '_' and '-', and not start with '.' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::validate_name("db-01.data_x").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(super::validate_name(bad).is_err(), "{bad}");
        }
    }
}
