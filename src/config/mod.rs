//! Configuration as a compiler: [`parse`] (the one serde_yaml call) → [`validate`] (every
//! error at once, each with `file:line:col` and a field path) → a typed [`Config`] that the
//! snapshot compiles further. The request path never sees a raw config type.

mod locate;
mod model;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use locate::Location;
pub use model::{AdminSettings, BackendSpec, Config, FlagsApiSettings, GuardSpec, RouteSpec};
pub use raw::OrderedMap;
pub use validate::{basis_points, format_percent};

/// One thing wrong with a config file, pointing at where to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub location: Option<Location>,
    /// Field path as the user reads it, e.g. `routes[1].split`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.col)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The result of reading a config file: a valid config plus warnings, or every error.
pub type Loaded = Result<Config, Vec<ConfigError>>;

/// Reads, parses and validates the file at `path`. Relative paths inside the file
/// (`state_file`) are resolved against the file's directory.
pub fn load(path: &Path) -> Loaded {
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![ConfigError {
            file: path.to_path_buf(),
            location: None,
            path: String::new(),
            message: format!("cannot read: {err}"),
        }]
    })?;
    compile_text(path, &text)
}

/// Parses and validates `text` as if it were the file at `path` (which is not read).
pub fn compile_text(path: &Path, text: &str) -> Loaded {
    let raw = parse(text).map_err(|(location, message)| {
        vec![ConfigError {
            file: path.to_path_buf(),
            location,
            path: String::new(),
            message,
        }]
    })?;
    validate::validate(raw, path, text)
}

/// The single place YAML is deserialized: swapping serde_yaml for a fork is a change here.
fn parse(text: &str) -> Result<raw::RawConfig, (Option<Location>, String)> {
    serde_yaml::from_str(text).map_err(|err| {
        let location = err.location().map(|at| Location {
            line: at.line(),
            col: at.column(),
        });
        let mut message = err.to_string();
        // serde_yaml appends " at line L column C"; the location is already in the prefix.
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        (location, message)
    })
}
