//! The streaming exec protocol (`clusterctl exec -i/-t`), the same from the client to the
//! controller and from the controller to the owning agent: a WebSocket upgrade of
//! `GET .../exec/stream?command=sh&command=-c&...&tty=true&stdin=true&rows=24&cols=80`, then
//! binary messages whose first byte is the channel (as Kubernetes' `v4.channel.k8s.io`):
//!
//! * client → server: [`STDIN`] bytes (an empty payload closes the command's stdin),
//!   [`RESIZE`] a JSON [`TerminalSize`];
//! * server → client: [`STDOUT`] and [`STDERR`] bytes (a terminal has only stdout), then one
//!   [`STATUS`] JSON [`ExecStatus`], then a close.
//!
//! Closing the socket early hangs the command up (SIGHUP, then SIGTERM).

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol both ends name.
pub const PROTOCOL: &str = "v1.exec.flotilla.dev";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// How the command ended: its exit code (128 + signal when killed), or why it never ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The query of a streaming exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStreamQuery {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Run the command on a terminal (stdout and stderr merge).
    pub tty: bool,
    /// Pass the client's input; without it the command's stdin is empty.
    pub stdin: bool,
    /// The terminal's initial size.
    pub size: Option<TerminalSize>,
}

/// A query parameter that is wrong: its name and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub field: String,
    pub detail: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

impl std::error::Error for QueryError {}

fn bad(field: &str, detail: impl Into<String>) -> QueryError {
    QueryError {
        field: field.to_owned(),
        detail: detail.into(),
    }
}

fn flag(field: &str, v: &str) -> Result<bool, QueryError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(field, format!("must be true or false, got {v:?}"))),
    }
}

impl ExecStreamQuery {
    /// Parse a URL query (without the `?`); unknown parameters are refused.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        let (mut rows, mut cols) = (None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "command" => q.command.push(v.into_owned()),
                "env" => {
                    if !v.contains('=') || v.starts_with('=') {
                        return Err(bad(
                            &format!("env[{}]", q.env.len()),
                            format!("must be KEY=VALUE, got {v:?}"),
                        ));
                    }
                    q.env.push(v.into_owned())
                }
                "cwd" => {
                    if !v.starts_with('/') {
                        return Err(bad("cwd", "must be an absolute path"));
                    }
                    q.cwd = Some(v.into_owned())
                }
                "tty" => q.tty = flag("tty", &v)?,
                "stdin" => q.stdin = flag("stdin", &v)?,
                "rows" | "cols" => {
                    let n: u16 = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(&k, format!("must be 1 to 65535, got {v:?}")))?;
                    if &*k == "rows" {
                        rows = Some(n)
                    } else {
                        cols = Some(n)
                    }
                }
                other => return Err(bad(other, "unknown query parameter")),
            }
        }
        if q.command.first().is_none_or(|c| c.is_empty()) {
            return Err(bad(
                "command",
                "at least one non-empty command= is required",
            ));
        }
        q.size = match (rows, cols) {
            (Some(rows), Some(cols)) => Some(TerminalSize { rows, cols }),
            (None, None) => None,
            _ => return Err(bad("rows", "rows and cols go together")),
        };
        if q.size.is_some() && !q.tty {
            return Err(bad("rows", "a terminal size needs tty=true"));
        }
        Ok(q)
    }

    /// The URL query (without the `?`).
    pub fn to_query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for c in &self.command {
            s.append_pair("command", c);
        }
        for e in &self.env {
            s.append_pair("env", e);
        }
        if let Some(c) = &self.cwd {
            s.append_pair("cwd", c);
        }
        s.append_pair("tty", if self.tty { "true" } else { "false" });
        s.append_pair("stdin", if self.stdin { "true" } else { "false" });
        if let Some(z) = self.size {
            s.append_pair("rows", &z.rows.to_string());
            s.append_pair("cols", &z.cols.to_string());
        }
        s.finish()
    }
}

/// One message: the channel byte, then the payload.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(channel);
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let q = ExecStreamQuery {
            command: vec!["sh".into(), "-c".into(), "echo a&b=c; exit".into()],
            env: vec!["TERM=xterm".into(), "X=a b".into()],
            cwd: Some("/tmp".into()),
            tty: true,
            stdin: true,
            size: Some(TerminalSize { rows: 24, cols: 80 }),
        };
        assert_eq!(ExecStreamQuery::parse(&q.to_query()).unwrap(), q);
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        for (query, field) in [
            ("", "command"),
            ("command=", "command"),
            ("command=sh&tty=yes", "tty"),
            ("command=sh&stdin=2", "stdin"),
            ("command=sh&tty=true&rows=0&cols=80", "rows"),
            ("command=sh&tty=true&rows=24", "rows"),
            ("command=sh&rows=24&cols=80", "rows"),
            ("command=sh&cols=99999", "cols"),
            ("command=sh&env=NOEQUALS", "env[0]"),
            ("command=sh&cwd=tmp", "cwd"),
            ("command=sh&shell=bash", "shell"),
        ] {
            let e = ExecStreamQuery::parse(query).unwrap_err();
            assert_eq!(e.field, field, "{query}: {e}");
        }
    }
}
