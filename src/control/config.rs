//! The configuration manager: what the daemon serves, persisted atomically
//! in `DATA_DIR/umbra.json` and restored at start.
//!
//! Atomic persist: write `umbra.json.tmp`, fsync it, rename it over
//! `umbra.json`, fsync the directory. A crash at any point leaves either the
//! old or the new file, never a torn one. The format is documented in
//! `docs/config.md`.

use crate::backend::FileOptions;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "umbra.json";
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    #[serde(default)]
    pub volumes: Vec<VolumeConfig>,
    #[serde(default)]
    pub exports: Vec<ExportConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_groups: Vec<ImageGroupConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_overflows: Vec<OverflowConfig>,
    /// Replication: this node's identity, listener, peers and sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repl: Option<ReplConfig>,
    /// Notification hooks (`umbra hook`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::control::hooks::HookConfig>,
}

pub use crate::services::repl::config::{PeerConfig, ReplConfig, ReplRole, ReplSetConfig};

/// An overflow volume compact image sets share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OverflowConfig {
    pub name: String,
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            volumes: Vec::new(),
            exports: Vec::new(),
            images: Vec::new(),
            image_groups: Vec::new(),
            image_overflows: Vec::new(),
            repl: None,
            hooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    /// Backing regular file or block device.
    pub path: PathBuf,
    #[serde(default)]
    pub options: FileOptions,
    /// The read cache, when enabled (write-through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
    /// Size the volume presents when it differs from its backing file's
    /// (a compact shadow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size_bytes: Option<u64>,
}

/// An image set. Its state (bits, copy direction, throttle) lives in the
/// bitmap volume; this only says where to find it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub name: String,
    pub master: String,
    pub shadow: String,
    pub bitmap: PathBuf,
    pub mode: crate::services::image::Kind,
    pub chunk_bytes: u32,
    #[serde(default)]
    pub memory_bitmap: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageGroupConfig {
    pub name: String,
    pub sets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub size_bytes: u64,
    /// Write-back: the safe store file (absent: write-through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_store: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    pub volume: String,
    pub kind: ExportKind,
    /// NBD: `HOST:PORT` or `unix:PATH`; ublk: the device path it got.
    pub listen: String,
    #[serde(default)]
    pub read_only: bool,
    /// ublk: queues and depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u16>,
    /// ublk: the device id, so a restart after a crash re-attaches to the
    /// same `/dev/ublkbN` (user recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_id: Option<u32>,
    /// NBD on a unix socket: its permission bits (none: 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// NBD over TLS: the directory with server-cert.pem and server-key.pem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificates: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    Nbd,
    Ublk,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid umbra configuration: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: configuration version {found} is not supported (this umbra reads version {CONFIG_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Config {
    /// Load `dir/umbra.json`; `Ok(None)` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Config>, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::parse(&text, &path).map(Some)
    }

    /// The configuration in `text` (read from `path`, named in errors):
    /// JSON of this version whose cross-references hold.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let path = path.to_owned();
        let cfg: Config = serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        if cfg.version != CONFIG_VERSION {
            return Err(ConfigError::Version {
                path,
                found: cfg.version,
            });
        }
        cfg.validate()
            .map_err(|problem| ConfigError::Invalid { path, problem })?;
        Ok(cfg)
    }

    /// Check cross-references: unique volume names, exports of known volumes.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for v in &self.volumes {
            crate::control::validate_name(&v.name)?;
            if !names.insert(&v.name) {
                return Err(format!("volume {} is listed twice", v.name));
            }
        }
        let mut exported = std::collections::HashSet::new();
        for e in &self.exports {
            if !names.contains(&e.volume) {
                return Err(format!("export of unknown volume {}", e.volume));
            }
            if !exported.insert((&e.volume, e.kind)) {
                return Err(format!("volume {} is exported twice", e.volume));
            }
        }
        let mut sets = std::collections::HashSet::new();
        for i in &self.images {
            crate::control::validate_name(&i.name)?;
            if !sets.insert(&i.name) {
                return Err(format!("image set {} is listed twice", i.name));
            }
            for v in [&i.master, &i.shadow] {
                if !names.contains(v) {
                    return Err(format!("image set {} names unknown volume {v}", i.name));
                }
            }
        }
        let mut hooks = std::collections::HashSet::new();
        for h in &self.hooks {
            h.validate()?;
            if !hooks.insert(&h.name) {
                return Err(format!("hook {} is listed twice", h.name));
            }
        }
        let mut groups = std::collections::HashSet::new();
        for g in &self.image_groups {
            crate::control::validate_name(&g.name)?;
            if !groups.insert(&g.name) {
                return Err(format!("image group {} is listed twice", g.name));
            }
            if let Some(s) = g.sets.iter().find(|s| !sets.contains(s)) {
                return Err(format!("image group {} names unknown set {s}", g.name));
            }
        }
        Ok(())
    }

    /// Persist atomically (see the module docs).
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
        let werr = |source| ConfigError::Write {
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).expect("config serialises");
        text.push('\n');
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(text.as_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(werr)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(werr)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), None);
        let cfg = Config {
            version: CONFIG_VERSION,
            volumes: vec![VolumeConfig {
                name: "a".into(),
                path: "/tmp/a.img".into(),
                options: FileOptions::default(),
                cache: Some(CacheConfig {
                    size_bytes: 1 << 20,
                    safe_store: Some("/tmp/a.safe".into()),
                }),
                virtual_size_bytes: None,
            }],
            exports: vec![ExportConfig {
                volume: "a".into(),
                kind: ExportKind::Nbd,
                listen: "127.0.0.1:10809".into(),
                read_only: false,
                queues: None,
                depth: None,
                dev_id: None,
                mode: None,
                tls_certificates: Some("/etc/umbra/pki".into()),
            }],
            images: vec![ImageConfig {
                name: "snap".into(),
                master: "a".into(),
                shadow: "a".into(),
                bitmap: "/tmp/snap.bitmap".into(),
                mode: crate::services::image::Kind::Dependent,
                chunk_bytes: 32768,
                memory_bitmap: false,
            }],
            image_groups: vec![ImageGroupConfig {
                name: "g".into(),
                sets: vec!["snap".into()],
            }],
            image_overflows: vec![OverflowConfig {
                name: "spill".into(),
                path: "/tmp/spill.ovf".into(),
            }],
            repl: Some(ReplConfig {
                node: "site-a".into(),
                listen: Some("127.0.0.1:7800".into()),
                peers: vec![PeerConfig {
                    name: "site-b".into(),
                    secret_file: "/etc/umbra/b.key".into(),
                }],
                sets: vec![],
                groups: Vec::new(),
                cluster: None,
            }),
            hooks: vec![crate::control::hooks::HookConfig {
                name: "pager".into(),
                on: vec!["repl.*".into()],
                run: "/usr/local/bin/page".into(),
                timeout_ms: 5000,
            }],
        };
        cfg.save(dir.path()).unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Some(cfg.clone()));
        assert!(!dir.path().join("umbra.json.tmp").exists());

        let mut bad = cfg.clone();
        bad.hooks.push(bad.hooks[0].clone());
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("hook pager is listed twice"));
        let mut bad = cfg.clone();
        bad.images[0].shadow = "nope".into();
        assert!(bad.validate().unwrap_err().contains("unknown volume nope"));
        let mut bad = cfg.clone();
        bad.image_groups[0].sets.push("nope".into());
        assert!(bad.validate().unwrap_err().contains("unknown set nope"));

        let mut bad = cfg.clone();
        bad.exports[0].volume = "b".into();
        bad.save(dir.path()).unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown volume b"), "{err}");

        fs::write(dir.path().join(CONFIG_FILE), "{not json").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a valid umbra configuration"), "{err}");

        fs::write(dir.path().join(CONFIG_FILE), r#"{"version": 9}"#).unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
    }
}
