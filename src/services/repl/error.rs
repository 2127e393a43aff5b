//! What a replication operation can fail with. The control plane maps each
//! kind to an admin error code; peers see the message.

/// A replication operation's failure. Every message names the set (and the
/// node or peer where that matters) and says what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplError {
    /// The request makes no sense as given (names, sizes, options).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    /// It conflicts with the set's state or another running operation.
    #[error("{0}")]
    Busy(String),
    /// The peer could not be reached or refused the request.
    #[error("{0}")]
    Peer(String),
    /// Both sides wrote since they last agreed; an administrator decides.
    #[error("{0}")]
    SplitBrain(String),
    /// It was tried and failed (I/O, a scoreboard, persisting).
    #[error("{0}")]
    Failed(String),
}

pub type RResult<T> = std::result::Result<T, ReplError>;

impl ReplError {
    pub fn no_set(name: &str) -> ReplError {
        ReplError::NotFound(format!(
            "no replication set named {name}; see `umbra repl list`"
        ))
    }

    pub fn no_identity() -> ReplError {
        ReplError::Invalid(
            "this node has no replication identity; run `umbra repl setup --node NAME --listen HOST:PORT` first"
                .into(),
        )
    }
}
