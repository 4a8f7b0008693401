//! `cutover kill | resume | status | diffs | ramp`: thin clients of the admin API, with errors a person at
//! 3 a.m. can act on.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::admin::diffs::Diffs;
use crate::admin::status::Status;

pub struct AdminClient {
    base: String,
    token: Option<String>,
    token_env: &'static str,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>, token_env: &'static str) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            token_env,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("{url} is not a valid admin URL"))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| anyhow!("the admin API at {} did not answer within 10 s", self.base))?
            .map_err(|err| {
                anyhow!(
                    "cannot reach the admin API at {}: {} (is cutover running? --admin sets the address)",
                    self.base,
                    root_cause(&err)
                )
            })?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
        Ok((status, value))
    }

    /// POSTs and turns refusals into clear errors.
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, value) = self.call(Method::POST, path, Some(body)).await?;
        let message = value["error"].as_str().unwrap_or("").to_owned();
        match status {
            s if s.is_success() => Ok(value),
            StatusCode::UNAUTHORIZED => bail!(
                "the admin API refused: no token sent (set ${} to the admin token)",
                self.token_env
            ),
            StatusCode::FORBIDDEN => bail!("the admin API refused: {message}"),
            _ if !message.is_empty() => bail!("{message}"),
            _ => bail!("the admin API answered {status}"),
        }
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        let (status, value) = self.call(Method::GET, "/api/status", None).await?;
        if !status.is_success() {
            bail!("the admin API answered {status} to GET /api/status");
        }
        serde_json::from_value(value).context("reading /api/status")
    }

    pub async fn diffs(&self, route: &str) -> anyhow::Result<Diffs> {
        let path = format!("/api/routes/{}/diffs", path_segment(route));
        let (status, value) = self.call(Method::GET, &path, None).await?;
        if !status.is_success() {
            match value["error"].as_str() {
                Some(message) => bail!("{message}"),
                None => bail!("the admin API answered {status} to GET {path}"),
            }
        }
        serde_json::from_value(value).with_context(|| format!("reading {path}"))
    }

    /// Kills one route, or all with `None`; prints what changed.
    pub async fn kill(
        &self,
        route: Option<&str>,
        reason: Option<String>,
    ) -> anyhow::Result<Switched> {
        let path = match route {
            Some(name) => format!("/api/routes/{}/kill", path_segment(name)),
            None => "/api/kill".to_owned(),
        };
        let mut body = json!({ "source": "cli" });
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        let value = self.post(&path, body).await?;
        Ok(describe(
            &value,
            "killed: all traffic to the stable backend",
            route,
        ))
    }

    pub async fn kill_flag(&self, flag: &str, reason: Option<String>) -> anyhow::Result<Switched> {
        let mut body = json!({ "source": "cli" });
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        let value = self
            .post(&format!("/api/flags/{}/kill", path_segment(flag)), body)
            .await?;
        Ok(describe(
            &value,
            "killed: everyone gets the default variant",
            Some(flag),
        ))
    }

    pub async fn resume_flag(&self, flag: &str) -> anyhow::Result<Switched> {
        let value = self
            .post(
                &format!("/api/flags/{}/resume", path_segment(flag)),
                json!({ "source": "cli" }),
            )
            .await?;
        Ok(describe(
            &value,
            "resumed: its rules and rollout apply",
            Some(flag),
        ))
    }

    pub async fn resume(&self, route: Option<&str>) -> anyhow::Result<Switched> {
        let path = match route {
            Some(name) => format!("/api/routes/{}/resume", path_segment(name)),
            None => "/api/resume".to_owned(),
        };
        let value = self.post(&path, json!({ "source": "cli" })).await?;
        Ok(describe(
            &value,
            "resumed: the configured split applies",
            route,
        ))
    }
}

impl AdminClient {
    /// `cutover ramp status ROUTE` (or `--flag KEY`): the ramp from `/api/status`.
    pub async fn ramp_status(&self, target: &RampTarget) -> anyhow::Result<String> {
        let status = self.status().await?;
        let (what, ramp) = match target {
            RampTarget::Route(route) => {
                let Some(found) = status.routes.iter().find(|r| &r.name == route) else {
                    bail!("no route named {route:?}");
                };
                (format!("route {route}"), found.ramp.as_ref())
            }
            RampTarget::Flag(key) => {
                let Some(found) = status.flags.iter().find(|f| &f.key == key) else {
                    bail!("no flag named {key:?}");
                };
                (format!("flag {key}"), found.ramp.as_ref())
            }
        };
        match ramp {
            Some(ramp) => Ok(ramp.render(&what)),
            None => bail!("{what} has no ramp: in the config"),
        }
    }

    /// `cutover ramp pause|resume|promote|abort ROUTE` (or `--flag KEY`).
    pub async fn ramp(
        &self,
        target: &RampTarget,
        action: &str,
        reason: Option<String>,
        kill: bool,
    ) -> anyhow::Result<Switched> {
        let mut body = json!({ "source": "cli" });
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        if kill {
            body["kill"] = json!(true);
        }
        let (path, route) = match target {
            RampTarget::Route(route) => (
                format!("/api/routes/{}/ramp/{action}", path_segment(route)),
                route.as_str(),
            ),
            RampTarget::Flag(key) => (
                format!("/api/flags/{}/ramp/{action}", path_segment(key)),
                key.as_str(),
            ),
        };
        let value = self.post(&path, body).await?;
        let now = format!(
            "ramp {}, step {} at {}%",
            value["state"].as_str().unwrap_or("?"),
            value["step"],
            value["percent"].as_f64().unwrap_or(0.0)
        );
        let mut summary = if value["changed"].as_bool() == Some(true) {
            format!("{route}: {action}: {now}")
        } else {
            format!("{route}: nothing to change ({now})")
        };
        if let Some(kill) = value["still_killed"].as_object() {
            summary.push_str(&format!(
                "\n{route} is still killed by {}: {} (`cutover resume {}{route}` undoes that)",
                kill.get("by").and_then(Value::as_str).unwrap_or("?"),
                kill.get("reason").and_then(Value::as_str).unwrap_or("?"),
                if matches!(target, RampTarget::Flag(_)) {
                    "--flag "
                } else {
                    ""
                },
            ));
        }
        Ok(Switched {
            summary,
            persist_error: value["persist_error"].as_str().map(str::to_owned),
        })
    }
}

/// Whose ramp a `cutover ramp` command is about.
pub enum RampTarget {
    Route(String),
    Flag(String),
}

/// What a kill or resume did, as the CLI reports it.
pub struct Switched {
    pub summary: String,
    /// Set when the change is in effect but `state_file` could not be written.
    pub persist_error: Option<String>,
}

fn describe(value: &Value, done: &str, route: Option<&str>) -> Switched {
    let changed: Vec<&str> = value["changed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let summary = if changed.is_empty() {
        format!("{}: nothing to change", route.unwrap_or("all routes"))
    } else {
        format!("{}: {done}", changed.join(", "))
    };
    Switched {
        summary,
        persist_error: value["persist_error"].as_str().map(str::to_owned),
    }
}

fn root_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// `cutover status [--watch]`.
pub async fn status(client: &AdminClient, watch: bool) -> anyhow::Result<()> {
    if !watch {
        print!("{}", client.status().await?.render());
        return Ok(());
    }
    loop {
        let screen = match client.status().await {
            Ok(status) => status.render(),
            Err(err) => format!("{err:#}\n"),
        };
        // Clear the screen and home the cursor, then redraw.
        print!("\x1b[2J\x1b[H{screen}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A route or flag name as one URL path segment.
fn path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}
