//! Configuration as a compiler: [`parse`] (the one serde_yaml call) → [`validate`] (every
//! error at once, each with `file:line:col` and a field path) → a typed [`Config`] that the
//! snapshot compiles further. The request path never sees a raw config type.

mod diff;
mod locate;
mod model;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use diff::{describe_changes, start_time_changes};
pub use locate::Location;
pub use model::{
    AccessLogSettings, AccessLogTarget, AdminSettings, BackendSpec, Config, FlagsApiSettings,
    GuardSpec, RampSpec, RouteSpec, ShadowSpec,
};

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

/// Every file a config was compiled from (the config file, then its `flags_file`), with the
/// text read from each, or `None` if it could not be read. A reload that finds the same
/// texts has nothing to do; the watcher follows each file's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources(pub Vec<(PathBuf, Option<String>)>);

impl Sources {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.iter().map(|(path, _)| path.clone()).collect()
    }

    /// Whether every file still has the text it had.
    pub fn unchanged(&self) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|(path, text)| std::fs::read_to_string(path).ok() == *text)
    }
}

/// Reads, parses and validates the file at `path` and the `flags_file` it names. Relative
/// paths inside the file (`state_file`, `flags_file`) are resolved against its directory.
pub fn load(path: &Path) -> Loaded {
    read(path).0
}

/// [`load`], also returning what was read.
pub fn read(path: &Path) -> (Loaded, Sources) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let (loaded, flags_source) = compile(path, &text);
            let mut sources = vec![(path.to_path_buf(), Some(text))];
            sources.extend(flags_source);
            (loaded, Sources(sources))
        }
        Err(err) => (
            Err(vec![ConfigError {
                file: path.to_path_buf(),
                location: None,
                path: String::new(),
                message: format!("cannot read: {err}"),
            }]),
            Sources(vec![(path.to_path_buf(), None)]),
        ),
    }
}

/// How long two reads of a config's files must agree before their content is used.
const SETTLE: Duration = Duration::from_millis(100);
/// How long the files may keep changing before a reload gives up on them for now.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Whether a config file is open for writing in place, as the file watcher learns it (a
/// write sets it, the writer's close clears it). Without a watcher it stays clear.
#[derive(Debug, Default)]
pub struct Writing(AtomicBool);

impl Writing {
    pub fn set(&self, open: bool) {
        self.0.store(open, Ordering::Release);
    }

    pub fn in_progress(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// [`read`], using only content that stayed the same across two reads [`SETTLE`] apart with no
/// writer holding a file open: a file caught in the middle of an in-place write is never
/// compiled, even when its first half happens to parse (and would drop routes). Blocks the
/// calling thread for that long.
pub fn read_settled(path: &Path, writing: &Writing) -> (Loaded, Sources) {
    let started = Instant::now();
    let mut last = read(path);
    loop {
        std::thread::sleep(SETTLE);
        if last.1.unchanged() && !writing.in_progress() {
            return last;
        }
        if started.elapsed() >= SETTLE_LIMIT {
            let error = ConfigError {
                file: path.to_path_buf(),
                location: None,
                path: String::new(),
                message: format!(
                    "still changing after {SETTLE_LIMIT:?}; not applied until two reads agree and no writer has it open"
                ),
            };
            return (Err(vec![error]), last.1);
        }
        last = read(path);
    }
}

/// Parses and validates `text` as if it were the file at `path` (which is not read; a
/// `flags_file` it names is).
pub fn compile_text(path: &Path, text: &str) -> Loaded {
    compile(path, text).0
}

fn compile(path: &Path, text: &str) -> (Loaded, Option<(PathBuf, Option<String>)>) {
    let raw: raw::RawConfig = match parse(text) {
        Ok(raw) => raw,
        Err(error) => return (Err(vec![error.in_file(path)]), None),
    };
    let Some(name) = raw.flags_file.clone() else {
        return (validate::validate(raw, path, text, None), None);
    };
    let flags_path = path.parent().unwrap_or(Path::new(".")).join(&name);
    let same_file = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let read = if same_file(&flags_path, path) {
        Err("names this config file; name a file that holds only `flags:`".to_owned())
    } else {
        std::fs::read_to_string(&flags_path)
            .map_err(|err| format!("cannot read {}: {err}", flags_path.display()))
    };
    let flags = match &read {
        Ok(flags_text) => validate::FlagsFile::Read {
            path: &flags_path,
            text: flags_text,
            parsed: parse(flags_text).map_err(|error| error.in_file(&flags_path)),
        },
        Err(message) => validate::FlagsFile::Unusable(message.clone()),
    };
    let loaded = validate::validate(raw, path, text, Some(flags));
    (loaded, Some((flags_path, read.ok())))
}

/// A parse error, before it is known which file it belongs to.
struct ParseError {
    location: Option<Location>,
    message: String,
}

impl ParseError {
    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            location: self.location,
            path: String::new(),
            message: self.message,
        }
    }
}

/// The single place YAML is deserialized: swapping serde_yaml for a fork is a change here.
fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ParseError> {
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
        ParseError { location, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_never_settles_is_not_compiled() {
        // Its content changes every 10 ms, faster than two reads can agree.
        let (loaded, _) = read_settled(Path::new("/proc/uptime"), &Writing::default());
        let errors = loaded.err().unwrap();
        assert!(errors[0].message.contains("still changing"), "{errors:?}");
    }

    #[test]
    fn a_file_open_for_writing_is_not_compiled_however_still_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "routes: []\n").unwrap();
        let writing = Writing::default();
        writing.set(true);
        let (loaded, _) = read_settled(&path, &writing);
        let errors = loaded.err().unwrap();
        assert!(errors[0].message.contains("still changing"), "{errors:?}");
    }
}
