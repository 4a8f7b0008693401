//! The access log: one JSON object per line per proxied request, to stdout or a file.
//!
//! The request path fills an [`Entry`] (a few cheap clones) and hands it over with `try_send`
//! on a bounded channel; a writer thread turns entries into lines and writes them in batches.
//! When the writer falls behind (a slow disk, a full pipe), the channel fills and entries are
//! dropped and counted in `cutover_access_log_dropped_total`: never queued without bound, never
//! waited for. A file is reopened on SIGUSR1, after logrotate has moved it.
//!
//! The query string, `authorization` and cookies are never logged: the line has the path only,
//! and no header other than `Host` and `x-request-id`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method};
use tokio::sync::mpsc;

use crate::config::{AccessLogSettings, AccessLogTarget};
use crate::telemetry;

/// Entries written with one `write` call at most.
const BATCH: usize = 512;
/// After a batch smaller than [`BATCH`], the writer sleeps this long so lines gather: while it
/// sleeps, handing a line over wakes no thread (a parked writer would cost each request a
/// futex wake-up), and the next batch is one larger write.
const GATHER: Duration = Duration::from_millis(10);
/// At most one error about a failing destination per this long.
const ERROR_EVERY: Duration = Duration::from_secs(10);

/// What the request path knows of one request, turned into a line by the writer.
pub struct Entry {
    /// When the request arrived (made wall-clock time by the writer, off the request path).
    pub started: Instant,
    pub client_ip: IpAddr,
    pub method: Method,
    /// The path, the host and the request id, one after the other: copied, in one allocation,
    /// because a clone of the request head's bytes would keep the connection's read buffer
    /// from being reused (hyper then allocates a new one for every request).
    texts: String,
    path_end: usize,
    host_end: usize,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub bucket: Option<u16>,
    pub status: u16,
    /// The request body's length when its head declares one.
    pub bytes_in: Option<u64>,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    pub duration: Duration,
    /// From sending to the backend to its response head.
    pub upstream: Option<Duration>,
    /// cutover's reason when the exchange failed (the `x-cutover-error` kinds).
    pub error: Option<&'static str>,
    pub fallback: bool,
    pub shadow: bool,
}

impl Entry {
    /// An entry for a request to `path` (without its query) on `host`, arrived at `started`;
    /// the rest is filled in as the exchange runs.
    pub fn new(
        started: Instant,
        client_ip: IpAddr,
        method: Method,
        path: &str,
        host: Option<&[u8]>,
    ) -> Entry {
        let host = host.and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
        // Room for a request id as cutover makes them (32 characters).
        let mut texts = String::with_capacity(path.len() + host.len() + 32);
        texts.push_str(path);
        texts.push_str(host);
        Entry {
            started,
            client_ip,
            method,
            path_end: path.len(),
            host_end: path.len() + host.len(),
            texts,
            route: None,
            backend: None,
            bucket: None,
            status: 0,
            bytes_in: None,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream: None,
            error: None,
            fallback: false,
            shadow: false,
        }
    }

    /// The `x-request-id` the backend was sent (the client's, or the one cutover added).
    pub fn set_request_id(&mut self, id: &HeaderValue) {
        if let Ok(id) = id.to_str() {
            self.texts.truncate(self.host_end);
            self.texts.push_str(id);
        }
    }

    fn path(&self) -> &str {
        &self.texts[..self.path_end]
    }

    fn host(&self) -> Option<&str> {
        Some(&self.texts[self.path_end..self.host_end]).filter(|h| !h.is_empty())
    }

    fn request_id(&self) -> Option<&str> {
        Some(&self.texts[self.host_end..]).filter(|id| !id.is_empty())
    }
}

/// The request path's end of the log. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    entries: mpsc::Sender<Entry>,
    dropped: metrics::Counter,
}

impl AccessLog {
    /// Opens the target and starts the writer thread, which writes every line handed over
    /// and ends once every `AccessLog` is dropped (join it to know the last line is out).
    /// `reopen` is set (by the SIGUSR1 handler) to open the file again.
    pub fn start(
        settings: AccessLogSettings,
        reopen: Arc<AtomicBool>,
    ) -> io::Result<(AccessLog, std::thread::JoinHandle<()>)> {
        let target = settings.target;
        let out = open(&target)?;
        let (entries, received) = mpsc::channel(settings.buffer);
        let writer = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(received, out, &target, &reopen, settings.buffer))?;
        let dropped = telemetry::access_log_dropped_counter();
        Ok((AccessLog { entries, dropped }, writer))
    }

    /// Hands `entry` to the writer, or drops and counts it when the writer is behind.
    pub fn send(&self, entry: Entry) {
        if self.entries.try_send(entry).is_err() {
            self.dropped.increment(1);
        }
    }
}

fn open(target: &AccessLogTarget) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        AccessLogTarget::Stdout => Box::new(io::stdout()),
        AccessLogTarget::File(path) => Box::new(append(path)?),
    })
}

fn append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))
}

/// The writer thread: batches of entries, one buffer, one write per batch.
fn write_lines(
    mut received: mpsc::Receiver<Entry>,
    mut out: Box<dyn Write + Send>,
    target: &AccessLogTarget,
    reopen: &AtomicBool,
    capacity: usize,
) {
    // A batch this large means lines are coming faster than they are gathered: no pause.
    let busy = BATCH.min(capacity / 2).max(1);
    let mut batch = Vec::with_capacity(BATCH);
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut clock = Clock::new();
    let mut last_error: Option<Instant> = None;
    // A write that failed part way may have left half a line: the next one starts afresh.
    let mut torn = false;
    while received.blocking_recv_many(&mut batch, BATCH) > 0 {
        let full = batch.len() >= busy;
        if reopen.swap(false, Ordering::AcqRel) {
            if let AccessLogTarget::File(path) = target {
                match append(path) {
                    Ok(file) => {
                        out = Box::new(file);
                        tracing::info!(path = %path.display(), "access log reopened");
                    }
                    Err(err) => tracing::error!(
                        "access log not reopened, still writing to the old file: {err}"
                    ),
                }
            }
        }
        if torn {
            buffer.push(b'\n');
        }
        for entry in batch.drain(..) {
            line(&mut buffer, &entry, &mut clock);
        }
        torn = false;
        if let Err(err) = out.write_all(&buffer).and_then(|()| out.flush()) {
            torn = true;
            if last_error.is_none_or(|at| at.elapsed() >= ERROR_EVERY) {
                last_error = Some(Instant::now());
                tracing::error!("access log: writing to {target} failed: {err}");
            }
        }
        buffer.clear();
        if !full {
            std::thread::sleep(GATHER);
        }
    }
}

/// Wall-clock timestamps for `Instant`s, formatted as RFC 3339 with milliseconds; the part up
/// to the second is formatted once per second, not once per line.
struct Clock {
    /// A wall-clock time and the `Instant` it was read at.
    anchor: (SystemTime, Instant),
    /// The second `prefix` is of, and `2026-12-05T04:06:10` for it.
    second: u64,
    prefix: String,
    ts: String,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            anchor: (SystemTime::now(), Instant::now()),
            second: u64::MAX,
            prefix: String::new(),
            ts: String::with_capacity(32),
        }
    }

    fn format(&mut self, at: Instant) -> &str {
        let mut since_epoch = self.since_epoch(at);
        if since_epoch.as_secs() != self.second {
            // Once a second the anchor is read again, so a clock set after start (a first NTP
            // sync, a resume from suspend) shows in the lines within a second.
            let anchor = (SystemTime::now(), Instant::now());
            if anchor.1 >= at {
                self.anchor = anchor;
                since_epoch = self.since_epoch(at);
            }
            self.second = since_epoch.as_secs();
            let second = SystemTime::UNIX_EPOCH + Duration::from_secs(self.second);
            self.prefix = humantime::format_rfc3339_seconds(second).to_string();
            self.prefix.pop(); // the `Z`, put back after the milliseconds
        }
        self.ts.clear();
        self.ts.push_str(&self.prefix);
        let _ = std::fmt::Write::write_fmt(
            &mut self.ts,
            format_args!(".{:03}Z", since_epoch.subsec_millis()),
        );
        &self.ts
    }

    /// `at` as wall-clock time since the epoch, by the anchor.
    fn since_epoch(&self, at: Instant) -> Duration {
        let (wall, then) = self.anchor;
        let time = match at.checked_duration_since(then) {
            Some(after) => wall + after,
            None => wall - then.duration_since(at),
        };
        time.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// One entry as a JSON line, appended to `buffer`. The keys are written as they are; every
/// value that could hold a quote or a control character (anything from the request, and
/// names) goes through serde_json's string escaping. Escaping the fixed keys too was half of
/// the writer's work.
fn line(buffer: &mut Vec<u8>, entry: &Entry, clock: &mut Clock) {
    let millis = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    buffer.extend_from_slice(b"{\"ts\":");
    string(buffer, Some(clock.format(entry.started)));
    buffer.extend_from_slice(b",\"request_id\":");
    string(buffer, entry.request_id());
    // An address's text never needs escaping.
    let _ = write!(buffer, ",\"client_ip\":\"{}\",\"method\":", entry.client_ip);
    string(buffer, Some(entry.method.as_str()));
    buffer.extend_from_slice(b",\"host\":");
    string(buffer, entry.host());
    buffer.extend_from_slice(b",\"path\":");
    string(buffer, Some(entry.path()));
    buffer.extend_from_slice(b",\"route\":");
    string(buffer, entry.route.as_deref());
    buffer.extend_from_slice(b",\"backend\":");
    string(buffer, entry.backend.as_deref());
    buffer.extend_from_slice(b",\"bucket\":");
    value(buffer, entry.bucket);
    buffer.extend_from_slice(b",\"status\":");
    value(buffer, Some(entry.status));
    buffer.extend_from_slice(b",\"bytes_in\":");
    value(buffer, entry.bytes_in);
    buffer.extend_from_slice(b",\"bytes_out\":");
    value(buffer, Some(entry.bytes_out));
    buffer.extend_from_slice(b",\"duration_ms\":");
    value(buffer, Some(millis(entry.duration)));
    buffer.extend_from_slice(b",\"upstream_ms\":");
    value(buffer, entry.upstream.map(millis));
    buffer.extend_from_slice(b",\"error\":");
    string(buffer, entry.error);
    buffer.extend_from_slice(b",\"fallback\":");
    value(buffer, Some(entry.fallback));
    buffer.extend_from_slice(b",\"shadow\":");
    value(buffer, Some(entry.shadow));
    buffer.extend_from_slice(b"}\n");
}

/// A JSON string, escaped, or `null`.
fn string(buffer: &mut Vec<u8>, text: Option<&str>) {
    value(buffer, text);
}

/// A JSON value (a number, a boolean, an escaped string), or `null`.
fn value(buffer: &mut Vec<u8>, value: Option<impl serde::Serialize>) {
    match value {
        // Serializing into a Vec cannot fail.
        Some(value) => {
            let _ = serde_json::to_writer(&mut *buffer, &value);
        }
        None => buffer.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_path_without_its_query_and_no_other_header() {
        let mut clock = Clock::new();
        // The clock's anchor put at a known wall-clock time, so the line's `ts` is known.
        clock.anchor.0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let uri: http::Uri = "/api/pay?card=4111111111111111&token=s3cret"
            .parse()
            .unwrap();
        let mut entry = Entry::new(
            clock.anchor.1 + Duration::from_millis(123),
            IpAddr::from([10, 0, 0, 7]),
            Method::POST,
            uri.path(),
            Some(b"shop.example.com"),
        );
        entry.set_request_id(&HeaderValue::from_static("abc"));
        entry.route = Some("payments".into());
        entry.backend = Some("payments-v2".into());
        entry.bucket = Some(4_211);
        entry.status = 201;
        entry.bytes_in = Some(42);
        entry.bytes_out = 7;
        entry.duration = Duration::from_micros(12_345);
        entry.upstream = Some(Duration::from_micros(11_000));
        entry.shadow = true;
        let mut buffer = Vec::new();
        line(&mut buffer, &entry, &mut clock);
        let text = String::from_utf8(buffer).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["path"], "/api/pay");
        assert_eq!(value["host"], "shop.example.com");
        assert_eq!(value["request_id"], "abc");
        assert_eq!(value["bucket"], 4_211);
        assert_eq!(value["duration_ms"], 12.345);
        assert_eq!(value["upstream_ms"], 11.0);
        assert!(!text.contains("s3cret") && !text.contains("4111"), "{text}");
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 17, "{keys:?}");
        assert_eq!(value["client_ip"], "10.0.0.7");
        assert_eq!(value["error"], serde_json::Value::Null);
        assert_eq!(
            (value["fallback"].clone(), value["shadow"].clone()),
            (false.into(), true.into())
        );
    }

    #[test]
    fn what_comes_from_the_request_is_escaped() {
        let mut clock = Clock::new();
        let mut entry = Entry::new(
            Instant::now(),
            IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            Method::GET,
            "/a\"b\\c",
            Some(b"h\"ost"),
        );
        entry.set_request_id(&HeaderValue::from_static("id\"},\"status\":1"));
        let mut buffer = Vec::new();
        line(&mut buffer, &entry, &mut clock);
        let value: serde_json::Value = serde_json::from_slice(&buffer).unwrap();
        assert_eq!(value["path"], "/a\"b\\c");
        assert_eq!(value["host"], "h\"ost");
        assert_eq!(value["request_id"], "id\"},\"status\":1");
        assert_eq!(value["status"], 0);
        assert_eq!(value["client_ip"], "::1");
    }
}
