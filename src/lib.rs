//! cutover: a reverse proxy that moves traffic from a legacy service to its replacement a
//! percentage at a time (the Strangler Fig pattern), with hot-reloaded YAML.
//!
//! The request path: [`proxy`] (check → match → pick → forward → record) over one immutable
//! [`snapshot`] that [`reload`] rebuilds from [`config`] and swaps whole.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod bearer;
pub mod body;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod flags;
pub mod forward;
pub mod framing;
pub mod headers;
pub mod hygiene;
pub mod listener;
pub mod overrides;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod status_page;
pub mod telemetry;
pub mod window;
