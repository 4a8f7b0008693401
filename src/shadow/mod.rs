//! Shadow traffic (issue 14): copies of requests sent to a candidate backend, and the candidate's
//! answers compared with the primary's. This first part is the comparison itself ([`compare`]
//! for JSON documents and learned noise, [`verdict`] for whole answers) and the copy of a
//! request body taken as it streams ([`tee`]); the copying on the request path, `shadow:` in
//! the config and the diffs API build on them.

pub mod compare;
pub mod tee;
pub mod verdict;
