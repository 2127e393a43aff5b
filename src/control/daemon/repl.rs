//! The admin adapter for replication (`repl.*` on the admin socket) and
//! what the replication service needs from the daemon ([`Host`]).
//!
//! Everything replication does lives in `services::repl` behind
//! [`crate::services::repl::Replication`]; this file parses arguments,
//! calls the facade and maps its errors. The daemon's state lock is taken
//! here only for the instant a volume is looked up or the configuration is
//! changed and persisted, never across a peer request or a quiesce.

use super::{online_volume, parse, Daemon, NoArgs};
use crate::control::admin::{ErrorCode, OpError};
use crate::control::config::ReplConfig;
use crate::interposer::Volume;
use crate::services::repl::{
    EnableOptions, Host, OnlineOptions, PolicyOptions, RResult, ReplError, SyncOptions,
    TuneOptions, WaitOptions,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

impl Daemon {
    pub(super) fn handle_repl(&self, op: &str, args: &Value) -> Result<Value, OpError> {
        let r = &self.repl;
        let v = match op {
            "repl.setup" => {
                let a: SetupArgs = parse(op, args)?;
                r.setup(&a.node, a.listen.as_deref())?
            }
            "repl.peer.add" => {
                let a: PeerAddArgs = parse(op, args)?;
                r.peer_add(&a.name, &a.secret_file)?
            }
            "repl.peer.remove" => r.peer_remove(&parse::<NameArg>(op, args)?.name)?,
            "repl.enable" => r.enable(parse::<EnableOptions>(op, args)?)?,
            "repl.sync" => r.sync(parse::<SyncOptions>(op, args)?)?,
            "repl.log" => {
                let a: LegArg = parse(op, args)?;
                r.log(&a.name, a.secondary.as_deref())?
            }
            "repl.tune" => r.tune(parse::<TuneOptions>(op, args)?)?,
            "repl.wait" => r.wait(parse::<WaitOptions>(op, args)?)?,
            "repl.swap" => {
                let a: SwapArgs = parse(op, args)?;
                if a.force {
                    r.takeover(&a.name, a.secondary.as_deref())?
                } else {
                    r.swap(&a.name, a.secondary.as_deref())?
                }
            }
            "repl.verify" => {
                let a: LegArg = parse(op, args)?;
                r.verify(&a.name, a.secondary.as_deref())?
            }
            "repl.resolve" => {
                let a: ResolveArgs = parse(op, args)?;
                r.resolve(&a.name, a.discard, a.secondary.as_deref())?
            }
            "repl.disable" => {
                let a: DisableArgs = parse(op, args)?;
                r.disable(&a.name, a.secondary.as_deref(), a.force)?
            }
            "repl.list" => {
                parse::<NoArgs>(op, args)?;
                Value::Array(r.list())
            }
            "repl.info" => {
                let a: LegArg = parse(op, args)?;
                r.info(&a.name, a.secondary.as_deref())?
            }
            "group.status" => r.group_status(&parse::<GroupArg>(op, args)?.group)?,
            "group.online" => {
                let a: GroupOnlineArgs = parse(op, args)?;
                r.group_online_at(
                    a.to.as_deref(),
                    OnlineOptions {
                        group: a.group,
                        accept_data_loss: a.accept_data_loss,
                        use_inconsistent: a.use_inconsistent,
                        timeout_ms: a.timeout_ms,
                    },
                )?
            }
            "group.offline" => {
                let a: GroupTimeoutArgs = parse(op, args)?;
                r.group_offline(&a.group, a.timeout_ms)?
            }
            "group.swap" => {
                let a: GroupToArgs = parse(op, args)?;
                r.group_swap(&a.group, a.to.as_deref())?
            }
            "group.failback" => r.group_failback(&parse::<GroupArg>(op, args)?.group)?,
            "group.join" => {
                let a: GroupTimeoutArgs = parse(op, args)?;
                r.group_join(&a.group, a.timeout_ms)?
            }
            "group.wait" => {
                let a: GroupWaitArgs = parse(op, args)?;
                r.group_wait(&a.group, &a.state, a.timeout_ms)?
            }
            "group.verify" => {
                let g = parse::<GroupArg>(op, args)?.group;
                // etcd is asked before the peers, with no lock held.
                let shared = self.cluster.shared_definition(&g);
                r.group_verify(&g, shared)?
            }
            "group.policy" => r.group_set_policy(parse::<PolicyOptions>(op, args)?)?,
            "cluster.join" => {
                let a: ClusterJoinArgs = parse(op, args)?;
                self.cluster.join(crate::cluster::ClusterConfig {
                    name: a.name,
                    etcd: a.etcd,
                    ttl_s: a
                        .ttl_s
                        .unwrap_or(crate::services::repl::config::DEFAULT_TTL_S),
                    priority_bias: a.priority_bias.unwrap_or(0),
                })?
            }
            "cluster.leave" => {
                parse::<NoArgs>(op, args)?;
                self.cluster.leave()?
            }
            "cluster.status" => {
                parse::<NoArgs>(op, args)?;
                self.cluster.status()?
            }
            "cluster.priority" => self.cluster.set_bias(parse::<BiasArgs>(op, args)?.bias)?,
            "repl.status" => {
                parse::<NoArgs>(op, args)?;
                r.status()
            }
            _ => {
                return Err(OpError::new(
                    ErrorCode::UnknownOp,
                    format!("unknown operation {op:?}; see docs/admin-protocol.md"),
                ))
            }
        };
        Ok(v)
    }
}

impl From<OpError> for ReplError {
    fn from(e: OpError) -> Self {
        match e.code {
            ErrorCode::NotFound => ReplError::NotFound(e.message),
            ErrorCode::Exists => ReplError::Exists(e.message),
            ErrorCode::Busy => ReplError::Busy(e.message),
            ErrorCode::Invalid | ErrorCode::BadRequest => ReplError::Invalid(e.message),
            _ => ReplError::Failed(e.message),
        }
    }
}

impl Host for Daemon {
    fn volume(&self, name: &str) -> RResult<Arc<Volume>> {
        Ok(online_volume(&self.state.lock(), name)?)
    }

    fn repl_config(&self) -> Option<ReplConfig> {
        self.state.lock().config.repl.clone()
    }

    fn edit_repl_config(
        &self,
        edit: &mut dyn FnMut(&mut Option<ReplConfig>) -> RResult<()>,
    ) -> RResult<()> {
        let mut st = self.state.lock();
        let before = st.config.repl.clone();
        let r = edit(&mut st.config.repl).and_then(|_| Ok(self.persist(&st)?));
        if r.is_err() {
            st.config.repl = before;
        }
        r
    }

    fn read_write_export(&self, volume: &str) -> Option<String> {
        self.state
            .lock()
            .config
            .exports
            .iter()
            .find(|e| e.volume == volume && !e.read_only)
            .map(|e| e.listen.clone())
    }

    fn is_image_shadow(&self, volume: &str) -> bool {
        self.state
            .lock()
            .config
            .images
            .iter()
            .any(|i| i.shadow == volume)
    }

    fn snapshot_take(&self, name: &str, volume: &str, chunk_bytes: u32) -> RResult<()> {
        self.handle(
            "image.enable",
            &json!({
                "name": name,
                "master": volume,
                "shadow": name,
                "mode": "dependent",
                "chunk_bytes": chunk_bytes,
            }),
        )?;
        Ok(())
    }

    fn snapshot_drop(&self, name: &str) -> RResult<()> {
        let gone = |r: Result<Value, OpError>| match r {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(ReplError::from(e)),
        };
        gone(self.handle("image.disable", &json!({"name": name, "force": true})))?;
        let path = self
            .state
            .lock()
            .config
            .volumes
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.path.clone());
        gone(self.handle("volume.remove", &json!({"name": name, "force": true})))?;
        // The file goes only with its volume: a volume left in the
        // configuration (say, the daemon was stopping) keeps its data.
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    fn snapshot_restore(&self, name: &str) -> RResult<()> {
        self.handle(
            "image.update",
            &json!({"name": name, "to": "master", "force": true}),
        )?;
        loop {
            let v = self.handle("image.wait", &json!({"name": name, "timeout_ms": 60_000}))?;
            if v["done"] == true {
                if v["state"] == "failed" {
                    return Err(ReplError::Failed(format!(
                        "restoring from image set {name}: {}",
                        v["error"]
                    )));
                }
                return Ok(());
            }
        }
    }

    fn nbd_exports(&self, volume: &str, read_only: bool) -> Vec<String> {
        self.state
            .lock()
            .config
            .exports
            .iter()
            .filter(|e| {
                e.volume == volume
                    && e.kind == crate::control::config::ExportKind::Nbd
                    && e.read_only == read_only
            })
            .map(|e| e.listen.clone())
            .collect()
    }

    fn export_nbd(&self, volume: &str, listen: &str, read_only: bool) -> RResult<()> {
        self.handle(
            "export.nbd",
            &json!({"volume": volume, "listen": listen, "read_only": read_only}),
        )?;
        Ok(())
    }

    fn export_remove(&self, volume: &str) -> RResult<()> {
        self.handle("export.remove", &json!({"volume": volume, "kind": "nbd"}))?;
        Ok(())
    }

    fn publish(&self, kind: &str, object: &str, note: crate::services::Note) {
        self.events.publish(kind, object, note);
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    fn stopping(&self) -> bool {
        self.is_stopping()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArg {
    name: String,
}

/// A set, and which of its secondaries (needed when it has several).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegArg {
    name: String,
    #[serde(default)]
    secondary: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapArgs {
    name: String,
    #[serde(default)]
    secondary: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveArgs {
    name: String,
    #[serde(default)]
    secondary: Option<String>,
    discard: crate::services::repl::Discard,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupArgs {
    node: String,
    #[serde(default)]
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerAddArgs {
    name: String,
    secret_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableArgs {
    name: String,
    #[serde(default)]
    secondary: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupArg {
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupTimeoutArgs {
    group: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupToArgs {
    group: String,
    #[serde(default)]
    to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupOnlineArgs {
    group: String,
    /// Bring it online there (failover from another node); default here.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    accept_data_loss: bool,
    #[serde(default)]
    use_inconsistent: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupWaitArgs {
    group: String,
    state: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterJoinArgs {
    name: String,
    etcd: Vec<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    priority_bias: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BiasArgs {
    bias: i64,
}
