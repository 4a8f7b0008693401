//! Shadow traffic: copies of a route's requests sent to a candidate backend, and the
//! candidate's answers compared with stable's, which the client gets as if nothing else
//! happened.
//!
//! [`live`] decides, on the request path, which requests are copied and holds what the route
//! has found; [`copy`] runs one copy on its own task; [`tee`] takes the request body's copy as
//! it streams to stable; [`verdict`] compares two whole answers and [`compare`] two JSON
//! documents, with the noise learned from a second stable instance.

pub mod compare;
pub mod copy;
pub mod live;
pub mod tee;
pub mod verdict;

pub use live::{LiveShadow, ShadowResult, ShadowState};
