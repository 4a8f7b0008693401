//! A route's `shadow:`: which backend gets the copies, which requests are copied, and what the
//! comparison ignores.

use std::time::Duration;

use http::{HeaderName, Method};

use super::Validator;
use crate::bucket::{basis_points, BUCKETS};
use crate::config::model::{BackendSpec, ShadowSpec};
use crate::config::raw::{RawShadow, RawSize};
use crate::shadow::compare::PointerPattern;
use crate::shadow::verdict::Settings;

const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Each copy in flight may hold a request and two response bodies of this size.
const MAX_MAX_BODY: usize = 64 * 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_INFLIGHT: u64 = 100;
/// Each copy in flight may hold a connection to the candidate (and one to the noise instance).
const MAX_MAX_INFLIGHT: u64 = 10_000;
const DEFAULT_SAMPLES: u64 = 50;
const MAX_SAMPLES: u64 = 1_000;

impl Validator<'_> {
    /// `stable` is the route's stable backend (an index into `backends`), which is what the
    /// candidate's answers are compared with.
    pub(super) fn shadow(
        &mut self,
        path: &str,
        raw: &RawShadow,
        stable: usize,
        declared: &[&str],
        backends: &[BackendSpec],
    ) -> Option<ShadowSpec> {
        let errors_before = self.errors.len();
        let to = self.shadow_backend(&format!("{path}.to"), &raw.to, declared, backends);
        if to == Some(stable) {
            self.error(
                &format!("{path}.to"),
                format!(
                    "{:?} is this route's stable backend: copies go to a candidate, whose answers are compared with stable's",
                    raw.to
                ),
            );
        }
        let share = match raw.percent {
            Some(percent) => basis_points(percent)
                .map_err(|message| self.error(&format!("{path}.percent"), message))
                .unwrap_or(0),
            None => BUCKETS,
        };
        let methods = self.shadow_methods(path, raw, &raw.to);
        let max_body = self.size(
            &format!("{path}.max_body"),
            raw.max_body.as_ref(),
            DEFAULT_MAX_BODY,
            MAX_MAX_BODY,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            DEFAULT_TIMEOUT,
        );
        let max_inflight = self.bounded(
            &format!("{path}.max_inflight"),
            raw.max_inflight,
            DEFAULT_MAX_INFLIGHT,
            1..=MAX_MAX_INFLIGHT,
        );
        let samples = self.bounded(
            &format!("{path}.samples"),
            raw.samples,
            DEFAULT_SAMPLES,
            0..=MAX_SAMPLES,
        );
        let compare = format!("{path}.compare");
        let mut settings = Settings::default();
        for (i, name) in raw.compare.ignore_headers.iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => settings.ignore_headers.push(name),
                Err(_) => self.error(
                    &format!("{compare}.ignore_headers[{i}]"),
                    format!("{name:?} is not a header name"),
                ),
            }
        }
        for (i, pointer) in raw.compare.ignore_json.iter().enumerate() {
            match PointerPattern::parse(pointer) {
                Ok(pattern) => settings.ignore_json.push(pattern),
                Err(message) => self.error(&format!("{compare}.ignore_json[{i}]"), message),
            }
        }
        let noise = raw.compare.noise.as_ref().and_then(|name| {
            let at = format!("{compare}.noise");
            let noise = self.shadow_backend(&at, name, declared, backends);
            if noise.is_some() && noise == to {
                self.error(
                    &at,
                    format!("{name:?} is the candidate: noise is learned from a second instance of stable"),
                );
            }
            noise
        });
        if self.errors.len() > errors_before {
            return None;
        }
        Some(ShadowSpec {
            to: to?,
            share,
            methods,
            max_body,
            timeout,
            max_inflight: max_inflight as usize,
            compare: settings,
            noise,
            samples: samples as usize,
        })
    }

    fn shadow_backend(
        &mut self,
        path: &str,
        name: &str,
        declared: &[&str],
        backends: &[BackendSpec],
    ) -> Option<usize> {
        if !declared.contains(&name) {
            self.error(path, format!("unknown backend {name:?}"));
            return None;
        }
        // Declared but invalid backends were reported where they are declared.
        backends.iter().position(|b| b.name == name)
    }

    /// `GET` and `HEAD` unless listed; a listed method that writes is allowed with a warning at
    /// every load, since the candidate performs each copied write a second time.
    fn shadow_methods(&mut self, path: &str, raw: &RawShadow, to: &str) -> Vec<Method> {
        let Some(listed) = &raw.methods else {
            return vec![Method::GET, Method::HEAD];
        };
        let at = format!("{path}.methods");
        if listed.is_empty() {
            self.error(
                &at,
                "an empty list copies nothing; leave it out to copy GET and HEAD".to_owned(),
            );
        }
        let mut methods = Vec::with_capacity(listed.len());
        for (i, method) in listed.iter().enumerate() {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => self.error(
                    &format!("{at}[{i}]"),
                    format!("{method:?} is not an HTTP method"),
                ),
            }
        }
        for method in &methods {
            if !matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            ) {
                self.warnings.push(format!(
                    "{at}: {method} requests are copied to {to:?}, which performs each of those writes a second time"
                ));
            }
        }
        methods
    }

    /// A size in bytes, at most `max`.
    fn size(&mut self, path: &str, raw: Option<&RawSize>, default: usize, max: usize) -> usize {
        let bytes = match raw {
            None => return default,
            Some(RawSize::Bytes(bytes)) => Some(*bytes),
            Some(RawSize::Text(text)) => parse_size(text),
        };
        match bytes {
            Some(bytes) if bytes <= max as u64 => bytes as usize,
            Some(_) => {
                self.error(path, format!("must be at most {} MiB", max >> 20));
                default
            }
            None => {
                self.error(
                    path,
                    "is not a size like 1MiB, 512KiB or 65536 (bytes)".to_owned(),
                );
                default
            }
        }
    }

    fn bounded(
        &mut self,
        path: &str,
        value: Option<u64>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> u64 {
        let value = value.unwrap_or(default);
        if !range.contains(&value) {
            self.error(
                path,
                format!("must be from {} to {}", range.start(), range.end()),
            );
            return default;
        }
        value
    }
}

/// `1MiB`, `512 KiB`, `10kB`, `2MB`, `100B` or a plain number of bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match text[digits..].trim_start() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("10kB"), Some(10_000));
        assert_eq!(parse_size("65536"), Some(65_536));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("1 mebibyte"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}
