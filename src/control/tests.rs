//! The control plane on real files in a temporary directory: startup, reloads, kills and
//! guard trips, each published as one snapshot.

use std::path::PathBuf;

use super::*;
use crate::control::guard::Trip;

const ROUTES: &str = "backends:\n  legacy: { url: \"http://127.0.0.1:9\" }\n  v2: { url: \"http://127.0.0.1:10\" }\n\
routes:\n  - name: payments\n    match: { path_prefix: /pay }\n    split: { legacy: 90, v2: 10 }\n";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn with(yaml: &str) -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write(yaml);
        files
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cutover.yaml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    fn write(&self, yaml: &str) {
        std::fs::write(self.config(), format!("state_file: state.json\n{yaml}")).unwrap();
    }
}

#[test]
fn startup_is_the_first_reload() {
    let files = Files::with(ROUTES);
    let control = Control::start(&files.config()).unwrap();
    let snapshot = control.live().load_full();
    assert_eq!(snapshot.generation, 1);
    assert_eq!(&*snapshot.routes[0].name, "payments");
    let last = control.last_reload();
    assert_eq!((last.trigger, last.result.clone()), ("startup", Ok(1)));
    // Nothing changed since: a reload reads the same text and does nothing.
    assert!(matches!(
        control.reload("api"),
        ReloadOutcome::Unchanged { generation: 1 }
    ));
}

#[test]
fn startup_rejects_what_a_reload_rejects_and_a_corrupt_state_file() {
    let files = Files::with(&ROUTES.replace("v2: 10", "v3: 10"));
    let errors = Control::start(&files.config()).err().unwrap();
    assert_eq!(errors[0].path, "routes[0].split", "{errors:?}");

    let files = Files::with(ROUTES);
    std::fs::write(files.state(), "{ not json").unwrap();
    let errors = Control::start(&files.config()).err().unwrap();
    assert_eq!(errors[0].path, "state_file");
}

#[test]
fn a_rejected_reload_keeps_the_last_good_snapshot() {
    let files = Files::with(ROUTES);
    let control = Control::start(&files.config()).unwrap();
    files.write(&ROUTES.replace("legacy: 90", "legacy: 80"));
    let ReloadOutcome::Rejected { errors } = control.reload("api") else {
        panic!("a split summing to 90% was applied");
    };
    assert!(errors[0].to_string().contains("sum to 90%"), "{errors:?}");
    assert_eq!(control.live().load().generation, 1);
    files.write(&ROUTES.replace("legacy: 90, v2: 10", "legacy: 75, v2: 25"));
    let ReloadOutcome::Applied { generation, diff } = control.reload("api") else {
        panic!("a valid edit was not applied");
    };
    assert_eq!(generation, 2);
    assert_eq!(diff, ["payments: legacy 90% → 75%, v2 10% → 25%"]);
    assert_eq!(control.live().load().routes[0].targets[1].share, 2_500);
}

#[test]
fn a_kill_is_published_signalled_and_persisted_and_a_resume_undoes_it() {
    let files = Files::with(ROUTES);
    let control = Control::start(&files.config()).unwrap();
    let before = control.live().load_full();
    let kills = before.routes[0].runtime.kill_signal.subscribe();
    let outcome = control
        .kill(
            Switch::Route,
            Some(&["payments"]),
            Kill::now(KillSource::Api, "5xx"),
        )
        .unwrap();
    assert_eq!(outcome.changed, ["payments"]);
    assert!(outcome.persisted.is_ok());
    assert!(kills.has_changed().unwrap(), "streams to v2 were not told");
    let after = control.live().load_full();
    assert_eq!(after.routes[0].kill.as_ref().unwrap().reason, "5xx");
    assert!(before.routes[0].kill.is_none(), "a snapshot never changes");
    assert!(std::fs::read_to_string(files.state())
        .unwrap()
        .contains("5xx"));
    // A kill survives a reload; an unknown name is refused.
    files.write(&format!("{ROUTES}# edited\n"));
    assert!(matches!(
        control.reload("api"),
        ReloadOutcome::Applied { .. }
    ));
    assert!(control.live().load().routes[0].kill.is_some());
    assert!(matches!(
        control.resume(Switch::Route, Some(&["nope"])),
        Err(ControlError::Unknown(..))
    ));
    control.resume(Switch::Route, Some(&["payments"])).unwrap();
    assert!(control.live().load().routes[0].kill.is_none());
}

#[test]
fn a_kill_in_the_yaml_is_resumed_in_the_yaml() {
    let files = Files::with(&format!("{ROUTES}    kill: true\n"));
    let control = Control::start(&files.config()).unwrap();
    assert!(matches!(
        control.resume(Switch::Route, Some(&["payments"])),
        Err(ControlError::KilledInConfig(..))
    ));
}

fn trip() -> Trip {
    Trip {
        route: "payments".into(),
        reason: "guard: v2 50.0% errors > 5% over 30s (10 of 20 requests)".into(),
    }
}

#[test]
fn a_guard_trip_kills_once_and_holds_until_a_resume() {
    let files = Files::with(ROUTES);
    let control = Control::start(&files.config()).unwrap();
    let runtime = control.live().load().routes[0].runtime.clone();
    assert!(runtime.trip());
    assert!(control.guard_trip(trip()));
    let kill = control.live().load().routes[0].kill.clone().unwrap();
    assert_eq!(kill.by, KillSource::Guard);
    assert_eq!(kill.reason, trip().reason);
    assert!(
        runtime.is_tripped(),
        "the mark holds with the kill, so nothing slips between"
    );
    // Already killed: nothing more to do.
    assert!(!control.guard_trip(trip()));
    control.resume(Switch::Route, Some(&["payments"])).unwrap();
    assert!(!runtime.is_tripped());
    assert!(!control.live().load().routes[0].is_killed());
}

#[test]
fn a_resume_calls_off_a_trip_not_yet_applied() {
    let files = Files::with(ROUTES);
    let control = Control::start(&files.config()).unwrap();
    let runtime = control.live().load().routes[0].runtime.clone();
    assert!(runtime.trip());
    let outcome = control.resume(Switch::Route, None).unwrap();
    assert!(outcome.changed.is_empty());
    assert!(!control.guard_trip(trip()), "a trip called off was applied");
    assert!(!control.live().load().routes[0].is_killed());
}
