//! The OFREP request body parser on any bytes: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    cutover::fuzzing::ofrep_context(body);
});
