//! A primary set's states as users see them, and which state may follow
//! which. Every change goes through [`SetState::can_become`]; a change the
//! table does not allow is refused (and logged), so no code path can, for
//! example, quietly turn `need sync` (the secondary is inconsistent) back
//! into `logging`.
//!
//! ```text
//!  logging ──sync──► syncing ──done──► replicating ──link lost / repl log──► logging
//!                      ▲                    │
//!                      └──verify found differing chunks, repl sync──┘
//!     │                 └─link lost─► need sync ──sync──► syncing
//!     ├─reverse sync─► reverse syncing ──done──► replicating
//!     │                       └─cut──► need reverse sync ──reverse sync──► reverse syncing
//!     └─generations disagree─► split brain ──repl resolve──► logging
//!  any ──scoreboard I/O error──► failed
//! ```

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SetState {
    Logging = 0,
    Syncing = 1,
    ReverseSyncing = 2,
    Replicating = 3,
    NeedSync = 4,
    NeedReverseSync = 5,
    Failed = 6,
    /// Both sides wrote since they last agreed; nothing is replicated
    /// until an administrator picks the side to discard.
    SplitBrain = 7,
}

const ALL: [SetState; 8] = [
    SetState::Logging,
    SetState::Syncing,
    SetState::ReverseSyncing,
    SetState::Replicating,
    SetState::NeedSync,
    SetState::NeedReverseSync,
    SetState::Failed,
    SetState::SplitBrain,
];

impl SetState {
    pub fn from_u8(v: u8) -> SetState {
        ALL.get(v as usize).copied().unwrap_or(SetState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SetState::Logging => "logging",
            SetState::Syncing => "syncing",
            SetState::ReverseSyncing => "reverse syncing",
            SetState::Replicating => "replicating",
            SetState::NeedSync => "need sync",
            SetState::NeedReverseSync => "need reverse sync",
            SetState::Failed => "failed",
            SetState::SplitBrain => "split brain",
        }
    }

    /// `need_sync`, `need-sync` and `need sync` all name one state.
    pub fn parse(s: &str) -> Option<SetState> {
        let s = s.replace(['_', '-'], " ");
        ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The transition table.
    pub fn can_become(self, next: SetState) -> bool {
        use SetState::*;
        if self == next || next == Failed {
            return true;
        }
        match self {
            Logging => matches!(
                next,
                Syncing | ReverseSyncing | Replicating | NeedSync | SplitBrain
            ),
            Syncing => matches!(next, Replicating | NeedSync | Logging),
            ReverseSyncing => matches!(next, Replicating | NeedReverseSync | Logging),
            // A resync of chunks an online verify found differing.
            Replicating => matches!(next, Logging | Syncing),
            NeedSync => matches!(next, Syncing | ReverseSyncing | SplitBrain),
            NeedReverseSync => matches!(next, ReverseSyncing | Syncing | SplitBrain),
            SplitBrain => matches!(next, Logging),
            Failed => false,
        }
    }

    /// States a sync may start from.
    pub fn may_sync(self) -> bool {
        matches!(
            self,
            SetState::Logging | SetState::NeedSync | SetState::NeedReverseSync
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_table_holds_its_promises() {
        for s in ALL {
            assert_eq!(SetState::parse(s.as_str()), Some(s));
            assert_eq!(SetState::from_u8(s as u8), s);
            assert!(s.can_become(SetState::Failed));
        }
        assert_eq!(SetState::parse("need_sync"), Some(SetState::NeedSync));
        assert!(!SetState::NeedSync.can_become(SetState::Logging));
        assert!(!SetState::SplitBrain.can_become(SetState::Syncing));
        assert!(!SetState::Failed.can_become(SetState::Logging));
        assert!(!SetState::Replicating.can_become(SetState::NeedSync));
    }
}
