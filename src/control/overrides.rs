//! Runtime overrides: kills set by the API, the CLI, the guard or a ramp, and where each ramp
//! stands, which outlive YAML edits and restarts. Persisted to `state_file` by write-temp, fsync, rename, so a crash leaves either
//! the old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{RampSpec, RouteSpec};
use crate::control::ramp_state::RampProgress;
use crate::flags::{Flag, FlagRamp};

/// Who pulled a kill switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KillSource {
    Api,
    Cli,
    Guard,
    Ramp,
    Yaml,
}

impl KillSource {
    pub fn as_str(self) -> &'static str {
        match self {
            KillSource::Api => "api",
            KillSource::Cli => "cli",
            KillSource::Guard => "guard",
            KillSource::Ramp => "ramp",
            KillSource::Yaml => "yaml",
        }
    }
}

/// One kill: who, when (RFC 3339, UTC) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    pub by: KillSource,
    pub at: String,
    pub reason: String,
}

impl Kill {
    /// The kill a `kill: true` in the config file stands for.
    pub fn in_config() -> Kill {
        Kill {
            by: KillSource::Yaml,
            at: String::new(),
            reason: "kill: true in the config file".to_owned(),
        }
    }

    pub fn now(by: KillSource, reason: impl Into<String>) -> Kill {
        Kill {
            by,
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            reason: reason.into(),
        }
    }
}

/// Everything in `state_file`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default)]
    pub routes: BTreeMap<String, Kill>,
    #[serde(default)]
    pub flags: BTreeMap<String, Kill>,
    /// Where each route's ramp stands, by route name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ramps: BTreeMap<String, RampProgress>,
    /// Where each flag's ramp stands, by flag key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flag_ramps: BTreeMap<String, RampProgress>,
}

impl Overrides {
    /// Reads `path`; a missing file means no overrides. A file that exists but cannot be read
    /// is an error: starting without it would silently undo someone's kill.
    pub fn load(path: &Path) -> Result<Overrides, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                format!(
                    "state_file {}: {err} (move it away to start without runtime kills)",
                    path.display()
                )
            }),
            // Under a path that is not a directory, no state can have been written either; the
            // first kill then reports that it cannot be saved.
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(Overrides::default())
            }
            Err(err) => Err(format!("state_file {}: {err}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|err| err.error)?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A route's ramp and where it stands, when it has one.
pub fn ramp_of<'a>(
    spec: &'a RouteSpec,
    overrides: &'a Overrides,
) -> Option<(&'a RampSpec, &'a RampProgress)> {
    let ramp = spec.ramp.as_ref()?;
    let progress = overrides.ramps.get(&spec.name)?;
    progress.follows(&ramp.plan).then_some((ramp, progress))
}

/// A flag's ramp and where it stands, when it has one.
pub fn flag_ramp_of<'a>(
    key: &str,
    flag: &'a Flag,
    overrides: &'a Overrides,
) -> Option<(&'a FlagRamp, &'a RampProgress)> {
    let ramp = flag.ramp.as_ref()?;
    let progress = overrides.flag_ramps.get(key)?;
    progress.follows(&ramp.plan).then_some((ramp, progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(Overrides::load(&path).unwrap(), Overrides::default());
        let mut overrides = Overrides::default();
        overrides.routes.insert(
            "payments".into(),
            Kill::now(
                KillSource::Guard,
                "guard: 40% errors > 5% over 30s (50 requests)",
            ),
        );
        overrides.save(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), overrides);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = Overrides::load(&path).unwrap_err();
        assert!(err.contains("move it away"), "{err}");
    }
}
