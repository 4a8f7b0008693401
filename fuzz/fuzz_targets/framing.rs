//! The framing sniffer on arbitrary bytes in arbitrary reads: where reads split the stream
//! must not change which heads it counts or flags.
//!
//! Input: byte 0 is a count `k` (mod 16); the next `k` bytes are chunk sizes (each byte + 1);
//! everything after is the stream, its remainder one last chunk.
#![no_main]

use cutover::fuzzing::sniff;
use libfuzzer_sys::fuzz_target;

/// The sniffer gives up on a head longer than this at a read-dependent point; hyper rejects
/// such heads anyway (`listener::MAX_HEAD_BYTES`), so they are outside the invariant.
const MAX_HEAD: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    if stream.len() > MAX_HEAD {
        return;
    }

    let mut chunks = Vec::with_capacity(sizes.len() + 1);
    let mut left = stream;
    for &size in sizes {
        let (chunk, after) = left.split_at((usize::from(size) + 1).min(left.len()));
        chunks.push(chunk);
        left = after;
    }
    chunks.push(left);

    let whole = sniff(&[stream]);
    assert_eq!(sniff(&chunks), whole, "split as {chunks:?}");
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(sniff(&bytewise), whole, "one byte per read");
});
