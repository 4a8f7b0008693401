//! Maps field paths (`routes[1].split.v3`) to their line and column in the YAML text, so
//! validation errors can point at the place to fix. serde_yaml keeps no spans, so this walks
//! the event stream of a second, span-aware parser; it never decides what the config means.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

#[derive(Default)]
pub struct LocationIndex {
    by_path: HashMap<String, Location>,
}

impl LocationIndex {
    pub fn build(text: &str) -> LocationIndex {
        let mut walker = Walker::default();
        // A scan error here is reported by serde_yaml with its own location; whatever was
        // indexed before it is still useful.
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        LocationIndex {
            by_path: walker.by_path,
        }
    }

    /// The location of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.by_path.get(path) {
                return Some(*location);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    /// `located`: whether a sequence item's location was set from its first key, which is more
    /// accurate than the parser's mark for the start of a block mapping.
    Map {
        path: String,
        key: Option<String>,
        located: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    by_path: HashMap<String, Location>,
}

impl Walker {
    /// Path of the value that starts now, recording where it starts. `None` when the event
    /// is a mapping key rather than a value.
    fn enter_value(&mut self, mark: Marker) -> Option<String> {
        let location = Location {
            line: mark.line(),
            col: mark.col() + 1,
        };
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { key, .. }) if key.is_none() => return None,
            Some(Frame::Map { path, key, .. }) => {
                let key = key.take().unwrap_or_default();
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                // The key's own location is recorded when the key is seen.
                return Some(child);
            }
            Some(Frame::Seq { path, next }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                child
            }
        };
        self.by_path.entry(path.clone()).or_insert(location);
        Some(path)
    }

    fn on_key(&mut self, key: String, mark: Marker) {
        if let Some(Frame::Map {
            path,
            key: slot,
            located,
        }) = self.stack.last_mut()
        {
            let location = Location {
                line: mark.line(),
                col: mark.col() + 1,
            };
            if !*located && path.ends_with(']') {
                self.by_path.insert(path.clone(), location);
                *located = true;
            }
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            self.by_path.entry(full).or_insert(location);
            *slot = Some(key);
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if self.expecting_key() {
                    self.on_key(value, mark);
                } else {
                    self.enter_value(mark);
                }
            }
            Event::Alias(_) => {
                if self.expecting_key() {
                    self.on_key("*".to_owned(), mark);
                } else {
                    self.enter_value(mark);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                let path = if self.expecting_key() {
                    // A complex key: index nothing below it.
                    self.on_key("?".to_owned(), mark);
                    "?".to_owned()
                } else {
                    self.enter_value(mark).unwrap_or_default()
                };
                self.stack.push(if is_map {
                    Frame::Map {
                        path,
                        key: None,
                        located: false,
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
listen: 0.0.0.0:8080
backends:
  legacy:
    url: http://127.0.0.1:9001
routes:
  - name: a
    split: { legacy: 90, v3: 10 }
  - name: b
    match:
      path_prefix: /b
";

    #[test]
    fn finds_keys_and_sequence_items() {
        let index = LocationIndex::build(YAML);
        assert_eq!(index.find("listen"), Some(Location { line: 1, col: 1 }));
        assert_eq!(
            index.find("backends.legacy.url"),
            Some(Location { line: 4, col: 5 })
        );
        assert_eq!(index.find("routes[0]"), Some(Location { line: 6, col: 5 }));
        assert_eq!(
            index.find("routes[0].split.v3"),
            Some(Location { line: 7, col: 26 })
        );
        assert_eq!(
            index.find("routes[1].match.path_prefix"),
            Some(Location { line: 10, col: 7 })
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LocationIndex::build(YAML);
        assert_eq!(
            index.find("routes[1].match.host"),
            Some(Location { line: 9, col: 5 })
        );
    }
}
