//! Where each ramp stands, as kept in `state_file`: its step, the share it gives `to`, the time
//! already spent at the step, whether it runs, and its history. Every change a person or the
//! schedule makes is a method here, so the rules are tested without a server.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::bucket::format_percent;
use crate::schedule::Plan;

/// History entries kept per ramp (the oldest are dropped).
const HISTORY: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RampState {
    /// Moves on when its gate holds over `every`.
    Running,
    /// Holds its step until resumed.
    Paused,
    /// Stopped by its gate or a person: the YAML's split applies until resumed.
    Aborted,
    /// Held its last step: stays there.
    Complete,
}

impl RampState {
    pub fn as_str(self) -> &'static str {
        match self {
            RampState::Running => "running",
            RampState::Paused => "paused",
            RampState::Aborted => "aborted",
            RampState::Complete => "complete",
        }
    }
}

/// One thing that happened to a ramp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampEvent {
    /// RFC 3339, UTC.
    pub at: String,
    /// `to`'s percent after the event.
    pub percent: f64,
    pub event: String,
}

/// A ramp's place, persisted in `state_file`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampProgress {
    /// The schedule this place is in: another `to` or other `steps` restart it.
    pub to: String,
    /// Basis points.
    pub steps: Vec<u32>,
    /// Index into `steps`.
    pub step: usize,
    /// `to`'s share in basis points while the ramp holds it: the step's, or what users
    /// already had when an edit left no step that high.
    pub share: u32,
    /// Time at this step while running, as of the last checkpoint.
    pub spent_ms: u64,
    pub state: RampState,
    /// Why it is paused or aborted.
    #[serde(default)]
    pub reason: Option<String>,
    /// Changes whenever the step or the state does: evidence gathered before belongs to
    /// another step, or to time the ramp did not run.
    pub epoch: u64,
    #[serde(default)]
    pub history: Vec<RampEvent>,
}

/// Why a person's action does not apply.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl RampProgress {
    /// A ramp seen for the first time: at the first step that gives `to` at least `had`
    /// (its share in the YAML's split), so no user moves back; complete at `had` when no
    /// step is that high.
    pub fn start(plan: &Plan, had: u32) -> RampProgress {
        let mut progress = RampProgress {
            to: plan.to.clone(),
            steps: plan.steps.clone(),
            step: 0,
            share: had,
            spent_ms: 0,
            state: RampState::Running,
            reason: None,
            epoch: 1,
            history: Vec::new(),
        };
        progress.place(had, true, "ramp started");
        progress
    }

    /// This place after the config was loaded again. The same `to` and `steps` keep it (an
    /// edit of `every` or the gate applies from now on); otherwise the schedule restarts at the
    /// first new step at or above what users have, or completes there.
    pub fn follow_edit(self, plan: &Plan, yaml_share: u32) -> RampProgress {
        if self.follows(plan) {
            return self;
        }
        let had = if self.to == plan.to {
            self.share_in_force(yaml_share)
        } else {
            yaml_share
        };
        let what = if self.to == plan.to {
            "steps changed: schedule restarted"
        } else {
            "`to` changed: schedule restarted"
        };
        let mut progress = RampProgress {
            to: plan.to.clone(),
            steps: plan.steps.clone(),
            share: had,
            spent_ms: 0,
            epoch: self.epoch.wrapping_add(1),
            ..self
        };
        // A new schedule runs, unless a person stopped the old one.
        if progress.state == RampState::Complete {
            progress.state = RampState::Running;
        }
        progress.place(had, false, what);
        progress
    }

    /// Whether a place read from `state_file` (which a person may have edited) is one a ramp
    /// can be at: a step within its steps and a share within 100%.
    pub fn is_sane(&self) -> bool {
        self.step < self.steps.len() && self.share <= crate::bucket::BUCKETS
    }

    /// Whether this place belongs to `plan`'s schedule.
    pub fn follows(&self, plan: &Plan) -> bool {
        self.to == plan.to && self.steps == plan.steps
    }

    /// `to`'s share in basis points while this ramp is in force; an aborted ramp gives back
    /// the YAML's.
    pub fn share_in_force(&self, yaml_share: u32) -> u32 {
        match self.state {
            RampState::Aborted => yaml_share,
            _ => self.share,
        }
    }

    pub fn spent(&self) -> Duration {
        Duration::from_millis(self.spent_ms)
    }

    pub fn percent(&self) -> f64 {
        f64::from(self.share) / 100.0
    }

    /// The schedule moved to step `next` after the gate held.
    /// The step held: the next one, or complete after the last.
    pub fn advance(&mut self, evidence: &str) {
        match self.next_step() {
            Some(next) => {
                self.move_to(next);
                let event = format!("step {}% after {evidence}", format_percent(self.share));
                self.record(event);
            }
            None => self.complete(evidence),
        }
    }

    /// The step after this place: the one it holds below (after an edit or a start between
    /// steps), else the following one; `None` at the last.
    pub fn next_step(&self) -> Option<usize> {
        match self.steps.get(self.step) {
            Some(&step) if self.share < step => Some(self.step),
            _ => (self.step + 1 < self.steps.len()).then_some(self.step + 1),
        }
    }

    /// The last step held its time.
    pub fn complete(&mut self, evidence: &str) {
        self.state = RampState::Complete;
        self.epoch = self.epoch.wrapping_add(1);
        self.record(format!("complete after {evidence}"));
    }

    /// The gate failed: the route is killed and the ramp stops until a person resumes it.
    pub fn fail(&mut self, reason: &str) {
        self.state = RampState::Aborted;
        self.reason = Some(reason.to_owned());
        self.epoch = self.epoch.wrapping_add(1);
        self.record(format!("aborted: {reason}"));
    }

    pub fn pause(&mut self, by: &str, spent: Duration) -> Result<bool, Refused> {
        match self.state {
            RampState::Running => {
                self.state = RampState::Paused;
                self.spent_ms = millis(spent);
                self.reason = Some(format!("paused by {by}"));
                self.epoch = self.epoch.wrapping_add(1);
                self.record(format!("paused by {by}"));
                Ok(true)
            }
            RampState::Paused => Ok(false),
            state => Err(self.refusal("pause", state)),
        }
    }

    /// Paused: runs again, with the time already spent. Aborted: runs again at the step it
    /// stopped at, from the start of that step, or from `yaml_share` when the split in the
    /// config gives `to` more than that by now (resuming never moves users back).
    pub fn resume(&mut self, by: &str, yaml_share: u32) -> Result<bool, Refused> {
        match self.state {
            RampState::Paused => {}
            RampState::Aborted => {
                self.spent_ms = 0;
                if yaml_share > self.share {
                    self.state = RampState::Running;
                    self.reason = None;
                    self.epoch = self.epoch.wrapping_add(1);
                    self.place(
                        yaml_share,
                        false,
                        &format!("resumed by {by} from the split"),
                    );
                    return Ok(true);
                }
            }
            RampState::Running => return Ok(false),
            state => return Err(self.refusal("resume", state)),
        }
        self.state = RampState::Running;
        self.reason = None;
        self.epoch = self.epoch.wrapping_add(1);
        self.record(format!("resumed by {by}"));
        Ok(true)
    }

    /// The next step now, gate skipped; the last step completes the ramp.
    pub fn promote(&mut self, by: &str, reason: &str) -> Result<(), Refused> {
        match self.state {
            RampState::Running | RampState::Paused => {}
            state => return Err(self.refusal("promote", state)),
        }
        let why = format!("promoted by {by}: {reason}");
        if let Some(next) = self.next_step() {
            self.move_to(next);
            self.record(format!("step {}% {why}", format_percent(self.share)));
        } else {
            self.state = RampState::Complete;
            self.reason = None;
            self.epoch = self.epoch.wrapping_add(1);
            self.record(format!("complete: {why}"));
        }
        Ok(())
    }

    /// Back to the YAML's split; `Ok(false)` when already aborted.
    pub fn abort(&mut self, by: &str, reason: &str) -> bool {
        if self.state == RampState::Aborted {
            return false;
        }
        self.fail(&format!("by {by}: {reason}"));
        true
    }

    fn move_to(&mut self, step: usize) {
        self.step = step;
        self.share = self.share.max(self.steps[step]);
        self.spent_ms = 0;
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Puts the ramp where users are: holding at `had` (a step or not) with the gate, the next
    /// step being the first above it; complete at `had` when no step is above it. A ramp
    /// `starting` with no more than its first step, or anything with nothing at all (no
    /// evidence could come), begins at the first step. So a ramp never lowers `to`, and never
    /// raises it without evidence except to where its schedule begins.
    fn place(&mut self, had: u32, starting: bool, what: &str) {
        let first = self.steps.first().copied().unwrap_or(0);
        match self.steps.iter().position(|&share| share >= had) {
            Some(_) if had == 0 || (starting && had <= first) => {
                self.step = 0;
                self.share = first;
                self.record(format!("{what} at {}%", format_percent(self.share)));
            }
            Some(step) => {
                self.step = step;
                self.share = had;
                if self.steps[step] == had {
                    self.record(format!("{what} at {}%", format_percent(had)));
                } else {
                    self.record(format!(
                        "{what} at {}%, what users have, before the step to {}%",
                        format_percent(had),
                        format_percent(self.steps[step])
                    ));
                }
            }
            None => {
                self.step = self.steps.len().saturating_sub(1);
                self.share = had;
                if self.state == RampState::Running || self.state == RampState::Paused {
                    self.state = RampState::Complete;
                    self.reason = None;
                }
                self.record(format!(
                    "{what}: {}% is already at or above every step, nothing to ramp",
                    format_percent(had)
                ));
            }
        }
    }

    fn refusal(&self, action: &str, state: RampState) -> Refused {
        let hint = match state {
            RampState::Aborted => " (`ramp resume` runs it again at its step)",
            RampState::Complete => " (edit `ramp:` in the config to start another)",
            _ => "",
        };
        Refused(format!(
            "cannot {action} a ramp that is {}{hint}",
            state.as_str()
        ))
    }

    fn record(&mut self, event: String) {
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        self.history.push(RampEvent {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            percent: self.percent(),
            event,
        });
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Gate;

    fn plan(steps: &[u32]) -> Plan {
        Plan {
            to: "v2".into(),
            steps: steps.to_vec(),
            every: Duration::from_secs(600),
            gate: Gate {
                min_requests: 100,
                max_error_rate: Some(1.0),
                max_latency_ratio: None,
                max_mismatch_rate: None,
            },
        }
    }

    const STEPS: [u32; 5] = [100, 500, 2_500, 5_000, 10_000];

    #[test]
    fn a_new_ramp_starts_where_the_split_already_is() {
        let start = RampProgress::start(&plan(&STEPS), 0);
        assert_eq!((start.step, start.share), (0, 100));
        // The split already gives 5%: the ramp starts there, not at 1%.
        let start = RampProgress::start(&plan(&STEPS), 500);
        assert_eq!((start.step, start.share), (1, 500));
        // Between steps: held where users are, the next step up after the gate.
        let start = RampProgress::start(&plan(&STEPS), 700);
        assert_eq!((start.step, start.share), (2, 700));
        assert_eq!(start.next_step(), Some(2));
        // Below the first step: the first step is where a ramp starts.
        let start = RampProgress::start(&plan(&[200, 500]), 50);
        assert_eq!((start.step, start.share), (0, 200));
        // Above every step: nothing to ramp, and no one moves back.
        let start = RampProgress::start(&plan(&[100, 500]), 700);
        assert_eq!((start.state, start.share), (RampState::Complete, 700));
    }

    #[test]
    fn an_edit_keeps_the_place_or_restarts_without_moving_anyone_back() {
        let mut at_25 = RampProgress::start(&plan(&STEPS), 0);
        at_25.advance("test");
        at_25.advance("test");
        assert_eq!(at_25.share, 2_500);
        at_25.spent_ms = 180_000;
        // Another gate or `every`: the same place and time.
        let mut other_gate = plan(&STEPS);
        other_gate.every = Duration::from_secs(60);
        other_gate.gate.min_requests = 10;
        assert_eq!(at_25.clone().follow_edit(&other_gate, 0), at_25);
        // New steps: held at 25% with the gate, then the first new step above it.
        let mut edited = at_25
            .clone()
            .follow_edit(&plan(&[1_000, 2_000, 3_000, 10_000]), 0);
        assert_eq!((edited.step, edited.share, edited.spent_ms), (2, 2_500, 0));
        assert_eq!(edited.state, RampState::Running);
        edited.advance("test");
        assert_eq!((edited.step, edited.share), (2, 3_000));
        edited.advance("test");
        assert_eq!((edited.step, edited.share), (3, 10_000));
        edited.advance("test");
        assert_eq!(edited.state, RampState::Complete);
        // No step as high: complete at what users have.
        let edited = at_25.clone().follow_edit(&plan(&[500, 1_000]), 0);
        assert_eq!((edited.state, edited.share), (RampState::Complete, 2_500));
        // Another `to` starts at its own share in the split.
        let mut to_v3 = plan(&STEPS);
        to_v3.to = "v3".into();
        let edited = at_25.clone().follow_edit(&to_v3, 0);
        assert_eq!(
            (edited.to.as_str(), edited.step, edited.share),
            ("v3", 0, 100)
        );
        // An aborted ramp stays aborted through an edit: only a person resumes it.
        let mut aborted = at_25;
        aborted.fail("ramp: v2 errors");
        let edited = aborted.follow_edit(&plan(&[1_000, 3_000, 10_000]), 0);
        assert_eq!(edited.state, RampState::Aborted);
        assert_eq!(edited.share_in_force(0), 0, "aborted: the YAML's share");
    }

    #[test]
    fn an_edit_below_the_first_step_holds_where_users_are() {
        let at_1 = RampProgress::start(&plan(&STEPS), 0);
        let edited = at_1.follow_edit(&plan(&[500, 2_500, 10_000]), 0);
        assert_eq!(
            (edited.step, edited.share),
            (0, 100),
            "not raised to 5% blind"
        );
        assert_eq!(edited.next_step(), Some(0));
    }

    #[test]
    fn people_pause_resume_promote_and_abort() {
        let mut ramp = RampProgress::start(&plan(&STEPS), 0);
        assert_eq!(ramp.pause("cli", Duration::from_secs(42)), Ok(true));
        assert_eq!((ramp.state, ramp.spent_ms), (RampState::Paused, 42_000));
        assert_eq!(
            ramp.pause("cli", Duration::ZERO),
            Ok(false),
            "already paused"
        );
        assert_eq!(ramp.resume("api", 0), Ok(true));
        assert_eq!((ramp.state, ramp.spent_ms), (RampState::Running, 42_000));
        let epoch = ramp.epoch;
        ramp.promote("api", "dashboards look fine").unwrap();
        assert_eq!((ramp.step, ramp.share, ramp.spent_ms), (1, 500, 0));
        assert!(ramp.epoch > epoch, "new evidence for the new step");
        assert!(ramp
            .history
            .last()
            .unwrap()
            .event
            .contains("dashboards look fine"));
        assert!(ramp.abort("cli", "rollback drill"));
        assert_eq!(ramp.share_in_force(0), 0);
        assert!(
            ramp.promote("api", "x").is_err(),
            "an aborted ramp is resumed first"
        );
        assert!(ramp.pause("api", Duration::ZERO).is_err());
        assert_eq!(ramp.resume("cli", 0), Ok(true));
        assert_eq!(
            (ramp.state, ramp.step, ramp.share),
            (RampState::Running, 1, 500)
        );
        // Aborted again while someone raised the split to 7%: resuming never lowers that.
        ramp.abort("api", "again");
        assert_eq!(ramp.resume("api", 700), Ok(true));
        assert_eq!(
            (ramp.state, ramp.step, ramp.share),
            (RampState::Running, 2, 700)
        );
        assert_eq!(ramp.next_step(), Some(2));
        // Promoting past the last step completes the ramp.
        for _ in 0..4 {
            ramp.promote("api", "go").unwrap();
        }
        assert_eq!((ramp.state, ramp.share), (RampState::Complete, 10_000));
        assert!(ramp.resume("api", 0).is_err());
    }

    #[test]
    fn a_place_edited_out_of_range_is_not_sane() {
        let mut ramp = RampProgress::start(&plan(&STEPS), 0);
        assert!(ramp.is_sane());
        ramp.share = 10_001;
        assert!(!ramp.is_sane());
        ramp.share = 100;
        ramp.step = 5;
        assert!(!ramp.is_sane());
    }

    #[test]
    fn the_state_file_round_trips_and_history_is_bounded() {
        let mut ramp = RampProgress::start(&plan(&STEPS), 0);
        for _ in 0..HISTORY + 10 {
            ramp.pause("api", Duration::ZERO).unwrap();
            ramp.resume("api", 0).unwrap();
        }
        assert_eq!(ramp.history.len(), HISTORY);
        let text = serde_json::to_string(&ramp).unwrap();
        assert_eq!(serde_json::from_str::<RampProgress>(&text).unwrap(), ramp);
    }
}
