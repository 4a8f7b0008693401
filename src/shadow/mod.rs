//! Shadow traffic (issue 14): copies of requests sent to a candidate backend, and the candidate's
//! answers compared with the primary's. This first part is the comparison itself ([`compare`]
//! for JSON documents and learned noise, [`verdict`] for whole answers); the copying on the
//! request path, `shadow:` in the config and the diffs API build on it.

pub mod compare;
pub mod verdict;
