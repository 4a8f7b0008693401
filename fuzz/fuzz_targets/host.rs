//! Host and authority checks on any request head `http` can represent: no panic, and an
//! accepted authority's host is its own prefix (asserted in the wrapper).
#![no_main]

use arbitrary::Arbitrary;
use cutover::fuzzing::{host_without_port, inspect_head};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Head<'a> {
    method: &'a [u8],
    version: u8,
    /// Zero, one or two Host fields.
    host_count: u8,
    first_host: &'a [u8],
    second_host: &'a [u8],
    uri: &'a [u8],
}

fuzz_target!(|head: Head<'_>| {
    let hosts = [head.first_host, head.second_host];
    let hosts = &hosts[..usize::from(head.host_count % 3)];
    inspect_head(head.method, head.uri, head.version, hosts);
    for text in [head.uri, head.first_host] {
        host_without_port(&String::from_utf8_lossy(text));
    }
});
