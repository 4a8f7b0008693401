//! cutover: a reverse proxy that moves traffic from a legacy service to its replacement a
//! percentage at a time (the Strangler Fig pattern), with hot-reloaded YAML.
//!
//! The module map, top to bottom; a module imports only from the groups below it:
//!
//! - [`server`]: the process lifecycle: bind the listeners, start the control plane, drain.
//! - The listeners' handlers: [`proxy`] (the request path: check → match → pick → forward →
//!   record), [`admin`] (admin API, status page, and the CLI's client for it) and
//!   [`flags_api`] (OFREP); all three accept through [`listener`].
//! - [`control`]: the control plane, the one writer of the live [`snapshot`]: reloads from
//!   file events, SIGHUP and the API; kills from the API and the guard; `state_file`.
//! - [`snapshot`]: one immutable value per config generation, one compiled route each.
//! - Leaves: [`config`] (parse, validate), [`flags`] (model and evaluator), [`bucket`],
//!   [`error`], [`telemetry`], [`ordered_map`], [`bearer`].

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

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
pub mod listener;
pub mod ordered_map;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod telemetry;
