//! Whether `state_file` holds the runtime kills that are live. A kill or resume applies at
//! once, whether or not it could be written; when the write fails, the failure is shown (API,
//! CLI, `/api/status`, status page, `cutover_state_persist_failures_total`) and the control
//! plane writes the whole current state again, with backoff, until it succeeds: a restart
//! before then would silently undo the change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::telemetry;

/// First wait before writing again, doubled after each failure up to `MAX_RETRY_DELAY`.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The live kills are not (all) in `state_file`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistFailure {
    /// The latest write's error.
    pub error: String,
    /// When the first failed write since the last good one happened (RFC 3339).
    pub since: String,
    /// Failed writes since the last good one.
    pub attempts: u64,
}

#[derive(Default)]
pub struct PersistState {
    failure: ArcSwapOption<PersistFailure>,
    retry: Notify,
}

impl PersistState {
    /// The current failure, if the last write failed. Never waits for the control plane.
    pub fn failure(&self) -> Option<Arc<PersistFailure>> {
        self.failure.load_full()
    }

    /// Notes how a write of the whole state went; called under the control lock.
    pub fn record(&self, written: &Result<(), String>) {
        match written {
            Ok(()) => {
                if let Some(failure) = self.failure.swap(None) {
                    tracing::warn!(
                        attempts = failure.attempts,
                        "state_file written: the runtime kills are saved again"
                    );
                }
            }
            Err(error) => {
                telemetry::state_persist_failure();
                let previous = self.failure.load_full();
                let failure = PersistFailure {
                    error: error.clone(),
                    since: previous.as_ref().map_or_else(
                        || humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                        |p| p.since.clone(),
                    ),
                    attempts: previous.map_or(1, |p| p.attempts + 1),
                };
                tracing::error!(
                    attempts = failure.attempts,
                    "state_file not written, retrying; a restart now would undo the runtime kills: {error}"
                );
                self.failure.store(Some(Arc::new(failure)));
                self.retry.notify_one();
            }
        }
    }

    /// Resolves when a write failed and has not been retried yet.
    pub async fn retry_wanted(&self) {
        self.retry.notified().await;
    }
}
