//! The daemon's configuration file (`umbra.json`): any text is a
//! configuration or an error naming the file; a configuration that parses
//! and validates saves and parses back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use umbra::control::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text, Path::new("umbra.json")) {
        let again = serde_json::to_string(&c).expect("a configuration serialises");
        let back = Config::parse(&again, Path::new("umbra.json")).expect("what was saved parses");
        assert_eq!(serde_json::to_string(&back).unwrap(), again);
    }
});
