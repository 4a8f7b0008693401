//! The config parser and validator on any text: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8; other bytes never reach the parser.
    if let Ok(text) = std::str::from_utf8(data) {
        cutover::fuzzing::compile_config(text);
    }
});
