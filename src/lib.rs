//! cutover: a reverse proxy that moves traffic from a legacy service to its replacement a
//! percentage at a time (the Strangler Fig pattern), with hot-reloaded YAML.
//!
//! The module map, top to bottom. Each file imports only from files below it
//! (`tests/layering.rs` checks that there is no cycle):
//!
//! - [`server`]: the process lifecycle: start the control plane, bind the listeners, drain.
//! - The handlers: [`proxy`] (`proxy/mod.rs`, the request path as phases), [`admin`] and
//!   [`flags_api`], all accepting through [`listener`]; and [`control`] (`control/mod.rs`, the
//!   one writer of the live snapshot, and `control/reload.rs`, what triggers a reload).
//! - [`snapshot`]: one immutable value per config generation, one compiled route each.
//! - What a snapshot is made of: `proxy::{upstream, pool}` (backends and their connections),
//!   `control::{guard, window, overrides}`, and [`config`] (parse, validate) with
//!   `proxy::routing` (matchers, buckets); the request path's helpers `proxy::{headers,
//!   hygiene, body, tunnel}`.
//! - Leaves: [`flags`] (model and evaluator), [`bucket`], [`error`], [`telemetry`],
//!   [`ordered_map`], [`bearer`], [`shadow`] (comparing two answers).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod admin;
pub mod bearer;
pub mod bucket;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod flags;
pub mod flags_api;
#[doc(hidden)]
pub mod fuzzing;
pub mod listener;
pub mod ordered_map;
pub mod proxy;
pub mod schedule;
pub mod server;
pub mod shadow;
pub mod snapshot;
pub mod telemetry;
#[cfg(test)]
mod testing;
