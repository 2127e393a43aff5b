//! Data services: layers of a volume's stack (see `interposer`). Each
//! service is a folder named for it.

pub mod cache;
pub mod image;
pub mod repl;

/// What an event says about what happened: `text` for people, `fields`
/// for scripts (names carry their unit: `size_bytes`, `lag_ms`; values are
/// numbers, strings, booleans or objects, never prose to parse). Services
/// report through it and the daemon's event stream carries both.
#[derive(Debug, Clone, Default)]
pub struct Note {
    pub text: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Note {
    pub fn new(text: impl Into<String>) -> Note {
        Note {
            text: text.into(),
            fields: serde_json::Map::new(),
        }
    }

    /// Add field `name` (a value that does not serialize becomes null).
    pub fn field(mut self, name: &str, value: impl serde::Serialize) -> Note {
        self.fields.insert(
            name.to_owned(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }
}

impl From<String> for Note {
    fn from(text: String) -> Note {
        Note::new(text)
    }
}

impl From<&str> for Note {
    fn from(text: &str) -> Note {
        Note::new(text)
    }
}
