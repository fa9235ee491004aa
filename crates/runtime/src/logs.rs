//! Container log files: CRI-style line format, size-based rotation, and
//! blocking readers (snapshot and follow).
//!
//! Every line in a log file has the form
//!
//! ```text
//! <RFC3339 UTC timestamp, nanoseconds> <stdout|stderr> <F|P> <content>\n
//! ```
//!
//! `F` marks a full line (its newline stripped), `P` a partial one: a line
//! longer than [`MAX_LINE_CONTENT`] bytes is cut into `P` pieces followed by
//! a final `F` piece, and a trailing line without a newline is written as `P`
//! when [`LogWriter::flush_partial`] is called (at EOF of the pipe).
//! [`raw_content`] turns entries back into the original byte stream.
//!
//! The writer ([`LogWriter`]) is plain blocking std code meant for the
//! single-process shim; the readers ([`read_all`], [`follow`]) are blocking
//! too and meant to be called from `spawn_blocking` by the agent.
//!
//! Rotation: `container.log` is the current file, `container.log.1` the
//! newest rotated one, … `container.log.N` the oldest, with at most
//! `max_files` files in total. `max_files == 1` truncates the current file in
//! place instead.
//!
//! Content is stored as raw bytes in the file; [`LogEntry::content`] is a
//! `String` decoded lossily, so streams that are valid UTF-8 round-trip
//! exactly (long lines are cut on character boundaries) and invalid bytes
//! read back as U+FFFD.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest content (in bytes) written in one log line; longer lines are
/// split into `P` pieces of at most this size followed by an `F` piece.
pub const MAX_LINE_CONTENT: usize = 16 * 1024;

/// How often [`follow`] polls for new data and checks its `stop` callback.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Upper bound on the rotated file index probed by readers.
const MAX_ROTATED_PROBE: u32 = 1000;

/// Readers give up on a "line" longer than this without a newline (garbage).
const MAX_RAW_LINE: usize = MAX_LINE_CONTENT + 1024;

const READ_BUF_SIZE: usize = 64 * 1024;

/// Which output stream of the container a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(format!(
                "invalid stream {other:?} (expected stdout or stderr)"
            )),
        }
    }
}

/// Size-based rotation settings for one container's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Rotate before a line would make the current file larger than this.
    pub max_size: u64,
    /// Total number of files kept, current one included (>= 1).
    pub max_files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

/// Errors of the log writer and readers.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid log line {line:?}: {reason}")]
    Parse { line: String, reason: String },
    #[error("invalid log config for {}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },
}

impl LogError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn parse(line: &[u8], reason: impl Into<String>) -> Self {
        const PREVIEW: usize = 80;
        let text = String::from_utf8_lossy(line);
        let line = if text.chars().count() > PREVIEW {
            let mut s: String = text.chars().take(PREVIEW).collect();
            s.push('…');
            s
        } else {
            text.into_owned()
        };
        LogError::Parse {
            line,
            reason: reason.into(),
        }
    }

    /// True when the error is an I/O "not found" (e.g. no log file yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC3339 timestamp exactly as written in the file.
    pub time: String,
    pub stream: Stream,
    /// `P` line: the content continues in the next entry of the same stream.
    pub partial: bool,
    /// Line content without the newline (lossy UTF-8).
    pub content: String,
}

impl LogEntry {
    /// The entry's timestamp, if it is a valid RFC3339 time.
    pub fn timestamp(&self) -> Option<SystemTime> {
        parse_rfc3339(&self.time)
    }
}

// ---------------------------------------------------------------------------
// RFC3339
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

/// (year, month, day) -> days since 1970-01-01, proleptic Gregorian.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // [0, 11]
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

// Range representable with a four-digit year.
const MIN_SECS: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
const MAX_SECS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC, always nine
/// fractional digits so that timestamps sort lexicographically). Times
/// outside years 0000..=9999 are clamped.
pub fn format_rfc3339(t: SystemTime) -> String {
    let (mut secs, mut nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    if secs < MIN_SECS {
        secs = MIN_SECS;
        nanos = 0;
    } else if secs > MAX_SECS {
        secs = MAX_SECS;
        nanos = 999_999_999;
    }
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |acc, &c| {
        acc.checked_mul(10)?.checked_add(u32::from(c - b'0'))
    })
}

/// Parses an RFC3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`,
/// fraction of 1 to 9 digits). Returns `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = i64::from(digits(&b[0..4])?);
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&frac[..n])? * 10u32.pow(9 - n as u32);
        rest = &frac[n..];
    }
    let offset: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2])?;
            let om = digits(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second)
        - offset;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))?
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))?
    };
    Some(t)
}

// ---------------------------------------------------------------------------
// Line format
// ---------------------------------------------------------------------------

/// Parses one log line (a single trailing `\n` is allowed and ignored).
pub fn parse_line(line: &str) -> Result<LogEntry, LogError> {
    parse_line_bytes(line.as_bytes())
}

/// Like [`parse_line`], for raw bytes as read from a log file; content that
/// is not valid UTF-8 is decoded lossily.
pub fn parse_line_bytes(line: &[u8]) -> Result<LogEntry, LogError> {
    let orig = line;
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.is_empty() {
        return Err(LogError::parse(orig, "empty line"));
    }
    let Some(sp) = line.iter().position(|&c| c == b' ') else {
        return Err(LogError::parse(
            orig,
            "expected \"<timestamp> <stream> <F|P> <content>\"",
        ));
    };
    let time = std::str::from_utf8(&line[..sp])
        .ok()
        .filter(|t| parse_rfc3339(t).is_some())
        .ok_or_else(|| LogError::parse(orig, "invalid RFC3339 timestamp"))?;
    let rest = &line[sp + 1..];
    let stream = if rest.starts_with(b"stdout ") {
        Stream::Stdout
    } else if rest.starts_with(b"stderr ") {
        Stream::Stderr
    } else {
        return Err(LogError::parse(
            orig,
            "invalid stream (expected stdout or stderr)",
        ));
    };
    let rest = &rest[7..];
    let partial = match rest.first() {
        Some(b'F') => false,
        Some(b'P') => true,
        _ => return Err(LogError::parse(orig, "invalid tag (expected F or P)")),
    };
    let content = match &rest[1..] {
        [] => &[][..],
        [b' ', content @ ..] => content,
        _ => return Err(LogError::parse(orig, "missing space after tag")),
    };
    Ok(LogEntry {
        time: time.to_owned(),
        stream,
        partial,
        content: String::from_utf8_lossy(content).into_owned(),
    })
}

/// Reconstructs the original byte stream: `F` entries get their newline
/// back, `P` entries are concatenated with what follows. Filter by stream
/// first to get one stream's output.
pub fn raw_content(entries: &[LogEntry]) -> Vec<u8> {
    let len = entries.iter().map(|e| e.content.len() + 1).sum();
    let mut out = Vec::with_capacity(len);
    for e in entries {
        out.extend_from_slice(e.content.as_bytes());
        if !e.partial {
            out.push(b'\n');
        }
    }
    out
}

/// Path of the `n`-th rotated file (`container.log.1` is the newest).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Removes the current log file and all rotated ones (e.g. when the
/// container is deleted). Missing files are not an error.
pub fn remove_logs(path: &Path) -> Result<(), LogError> {
    let remove = |p: &Path| match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LogError::io("remove log file", p, e)),
    };
    remove(path)?;
    let mut misses = 0;
    for n in 1..=MAX_ROTATED_PROBE {
        if remove(&rotated_path(path, n))? {
            misses = 0;
        } else {
            misses += 1;
            if misses >= 2 {
                break;
            }
        }
    }
    Ok(())
}

/// Cut point (<= `max`) for splitting `line`, moved back (by at most 3
/// bytes) so that a UTF-8 sequence is not cut in two.
fn split_point(line: &[u8], max: usize) -> usize {
    debug_assert!(line.len() > max);
    let mut cut = max;
    while cut > 0 && max - cut < 3 && (line[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut == 0 || (line[cut] & 0xC0) == 0x80 {
        // Not UTF-8 (or a degenerate max): cut anywhere.
        max
    } else {
        cut
    }
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Appends container output to a log file, with rotation.
///
/// Not internally synchronized: wrap it in a `Mutex` when stdout and stderr
/// are pumped by different threads. Incomplete trailing lines are buffered
/// per stream until their newline arrives, until they exceed
/// [`MAX_LINE_CONTENT`], or until [`LogWriter::flush_partial`]; buffered
/// data is flushed as `P` lines when the writer is dropped.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    cfg: LogConfig,
    /// `None` after a failed rotation: reopened on the next write.
    file: Option<File>,
    /// Size of the current file as far as we know.
    size: u64,
    /// Encoded lines not yet written (one batch per `write_chunk`).
    out: Vec<u8>,
    /// Incomplete trailing line per stream.
    partial: [Vec<u8>; 2],
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl LogWriter {
    /// Opens (creating if needed) `path` for appending. The parent
    /// directory must exist.
    pub fn open(path: &Path, cfg: LogConfig) -> Result<Self, LogError> {
        if cfg.max_files == 0 {
            return Err(LogError::InvalidConfig {
                path: path.to_path_buf(),
                reason: "max_files must be at least 1".into(),
            });
        }
        if cfg.max_size == 0 {
            return Err(LogError::InvalidConfig {
                path: path.to_path_buf(),
                reason: "max_size must be greater than 0".into(),
            });
        }
        let file = open_append(path).map_err(|e| LogError::io("open log file", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| LogError::io("stat log file", path, e))?
            .len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            cfg,
            file: Some(file),
            size,
            out: Vec::new(),
            partial: [Vec::new(), Vec::new()],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> LogConfig {
        self.cfg
    }

    /// Feeds raw bytes read from the container's `stream` pipe. Complete
    /// lines are written at once; an incomplete trailing line stays buffered.
    pub fn write_chunk(&mut self, stream: Stream, data: &[u8]) -> Result<(), LogError> {
        if data.is_empty() {
            return Ok(());
        }
        let ts = format_rfc3339(SystemTime::now());
        let mut buf = std::mem::take(&mut self.partial[stream.index()]);
        let mut rest = data;
        let mut result = Ok(());
        while !rest.is_empty() {
            match rest.iter().position(|&c| c == b'\n') {
                Some(i) => {
                    let line = if buf.is_empty() {
                        &rest[..i]
                    } else {
                        buf.extend_from_slice(&rest[..i]);
                        &buf[..]
                    };
                    result = self.push_line(&ts, stream, line);
                    buf.clear();
                    rest = &rest[i + 1..];
                }
                None => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                    // Emit P pieces while the line is known to be too long.
                    let mut start = 0;
                    while buf.len() - start > MAX_LINE_CONTENT && result.is_ok() {
                        let cut = split_point(&buf[start..], MAX_LINE_CONTENT);
                        result = self.push_record(&ts, stream, true, &buf[start..start + cut]);
                        start += cut;
                    }
                    buf.drain(..start);
                }
            }
            if result.is_err() {
                break;
            }
        }
        self.partial[stream.index()] = buf;
        let flushed = self.write_out();
        result.and(flushed)
    }

    /// Writes a buffered incomplete line of `stream`, if any, as a `P` line
    /// (call at EOF of the pipe; harmless at any other time).
    pub fn flush_partial(&mut self, stream: Stream) -> Result<(), LogError> {
        let buf = std::mem::take(&mut self.partial[stream.index()]);
        if buf.is_empty() {
            return Ok(());
        }
        let ts = format_rfc3339(SystemTime::now());
        let result = self.push_record(&ts, stream, true, &buf);
        let flushed = self.write_out();
        result.and(flushed)
    }

    /// Writes a complete line, splitting it if it is too long.
    fn push_line(&mut self, ts: &str, stream: Stream, mut line: &[u8]) -> Result<(), LogError> {
        while line.len() > MAX_LINE_CONTENT {
            let cut = split_point(line, MAX_LINE_CONTENT);
            self.push_record(ts, stream, true, &line[..cut])?;
            line = &line[cut..];
        }
        self.push_record(ts, stream, false, line)
    }

    /// Encodes one record into the batch, rotating first if needed.
    fn push_record(
        &mut self,
        ts: &str,
        stream: Stream,
        partial: bool,
        content: &[u8],
    ) -> Result<(), LogError> {
        // "<ts> <stream> <F|P> <content>\n"
        let len = (ts.len() + 1 + 6 + 1 + 1 + 1 + content.len() + 1) as u64;
        let current = self.size + self.out.len() as u64;
        if current > 0 && current + len > self.cfg.max_size {
            self.write_out()?;
            self.rotate()?;
        }
        self.out.extend_from_slice(ts.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(stream.as_str().as_bytes());
        self.out
            .extend_from_slice(if partial { b" P " } else { b" F " });
        self.out.extend_from_slice(content);
        self.out.push(b'\n');
        Ok(())
    }

    fn ensure_open(&mut self) -> Result<&mut File, LogError> {
        if self.file.is_none() {
            let file = open_append(&self.path)
                .map_err(|e| LogError::io("open log file", &self.path, e))?;
            self.size = file
                .metadata()
                .map_err(|e| LogError::io("stat log file", &self.path, e))?
                .len();
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("log file just opened"))
    }

    /// Writes the pending batch. On error the batch is dropped (the shim
    /// must not buffer without bound) and the size is re-read.
    fn write_out(&mut self) -> Result<(), LogError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.out);
        let result = self.write_batch(&out);
        out.clear();
        self.out = out; // keep the allocation
        result
    }

    fn write_batch(&mut self, batch: &[u8]) -> Result<(), LogError> {
        let file = self.ensure_open()?;
        match file.write_all(batch) {
            Ok(()) => {
                self.size += batch.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Ok(m) = file.metadata() {
                    self.size = m.len();
                }
                Err(LogError::io("write log file", &self.path, e))
            }
        }
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        if self.cfg.max_files <= 1 {
            let file = self.ensure_open()?;
            file.set_len(0)
                .map_err(|e| LogError::io("truncate log file", &self.path, e))?;
            self.size = 0;
            return Ok(());
        }
        // From here on the current handle may point at a rotated file.
        self.file = None;
        let keep = self.cfg.max_files - 1;
        // Drop files beyond the limit (left over from a larger max_files).
        let mut n = keep + 1;
        loop {
            let p = rotated_path(&self.path, n);
            match fs::remove_file(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(LogError::io("remove rotated log file", &p, e)),
            }
            if n > MAX_ROTATED_PROBE {
                break;
            }
        }
        for i in (1..keep).rev() {
            let from = rotated_path(&self.path, i);
            match fs::rename(&from, rotated_path(&self.path, i + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("rotate log file", &from, e)),
            }
        }
        fs::rename(&self.path, rotated_path(&self.path, 1))
            .map_err(|e| LogError::io("rotate log file", &self.path, e))?;
        self.ensure_open()?;
        tracing::debug!(path = %self.path.display(), "rotated log file");
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Err(e) = self.flush_partial(stream) {
                tracing::warn!(error = %e, "failed to flush partial log line");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

type FileId = (u64, u64);

/// An open log file read line by line from where it was last read.
struct LineFile {
    path: PathBuf,
    file: File,
    id: FileId,
    /// Bytes consumed from the file so far.
    offset: u64,
    /// Incomplete trailing line.
    pending: Vec<u8>,
    /// Discarding an over-long garbage line up to its newline.
    skipping: bool,
}

impl LineFile {
    fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let m = file.metadata()?;
        Ok(LineFile {
            path: path.to_path_buf(),
            file,
            id: (m.dev(), m.ino()),
            offset: 0,
            pending: Vec::new(),
            skipping: false,
        })
    }

    /// Reads to EOF, calling `f` for each complete, valid line (invalid
    /// lines are logged and skipped). Returns `Ok(false)` if `f` did.
    fn read_lines(&mut self, f: &mut dyn FnMut(LogEntry) -> bool) -> Result<bool, LogError> {
        let mut buf = vec![0u8; READ_BUF_SIZE];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LogError::io("read log file", &self.path, e)),
            };
            self.offset += n as u64;
            let mut data = &buf[..n];
            if self.skipping {
                match data.iter().position(|&c| c == b'\n') {
                    Some(i) => {
                        data = &data[i + 1..];
                        self.skipping = false;
                    }
                    None => continue,
                }
            }
            while let Some(i) = data.iter().position(|&c| c == b'\n') {
                let parsed = if self.pending.is_empty() {
                    parse_line_bytes(&data[..i])
                } else {
                    self.pending.extend_from_slice(&data[..i]);
                    let p = parse_line_bytes(&self.pending);
                    self.pending.clear();
                    p
                };
                data = &data[i + 1..];
                match parsed {
                    Ok(entry) => {
                        if !f(entry) {
                            return Ok(false);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "skipping invalid log line");
                    }
                }
            }
            self.pending.extend_from_slice(data);
            if self.pending.len() > MAX_RAW_LINE {
                tracing::warn!(path = %self.path.display(), "skipping over-long log line");
                self.pending.clear();
                self.skipping = true;
            }
        }
    }

    fn read_all(&mut self) -> Result<Vec<LogEntry>, LogError> {
        let mut v = Vec::new();
        self.read_lines(&mut |e| {
            v.push(e);
            true
        })?;
        Ok(v)
    }

    /// Start over from the beginning (file truncated in place).
    fn rewind(&mut self) -> Result<(), LogError> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| LogError::io("seek log file", &self.path, e))?;
        self.offset = 0;
        self.pending.clear();
        self.skipping = false;
        Ok(())
    }
}

fn open_optional(path: &Path) -> Result<Option<LineFile>, LogError> {
    match LineFile::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("open log file", path, e)),
    }
}

/// Opens the rotated files, newest (`.1`) first, skipping handles to files
/// already in `seen`. Tolerates one missing index (a rotation in progress
/// renames files one at a time).
fn open_rotated(path: &Path, seen: &mut Vec<FileId>) -> Result<Vec<LineFile>, LogError> {
    let mut out = Vec::new();
    let mut misses = 0;
    for n in 1..=MAX_ROTATED_PROBE {
        match open_optional(&rotated_path(path, n))? {
            Some(f) => {
                misses = 0;
                if !seen.contains(&f.id) {
                    seen.push(f.id);
                    out.push(f);
                }
            }
            None => {
                misses += 1;
                if misses >= 2 {
                    break;
                }
            }
        }
    }
    Ok(out)
}

struct Snapshot {
    entries: Vec<LogEntry>,
    current: Option<LineFile>,
    found: bool,
}

/// Reads the current file (always, to EOF) and as many rotated files as
/// needed for `tail`, returning entries oldest first.
fn snapshot(path: &Path, tail: Option<usize>) -> Result<Snapshot, LogError> {
    // Open the current file first, then the rotated ones: a rotation that
    // happens in between shows up as a duplicate handle, dropped by id.
    let mut current = open_optional(path)?;
    let mut seen: Vec<FileId> = current.iter().map(|f| f.id).collect();
    let rotated = open_rotated(path, &mut seen)?;
    let found = current.is_some() || !rotated.is_empty();

    let mut chunks: Vec<Vec<LogEntry>> = Vec::new(); // newest first
    let mut count = 0usize;
    if let Some(cur) = current.as_mut() {
        let v = cur.read_all()?;
        count += v.len();
        chunks.push(v);
    }
    for mut f in rotated {
        if tail.is_some_and(|t| count >= t) {
            break;
        }
        let v = f.read_all()?;
        count += v.len();
        chunks.push(v);
    }
    let mut entries = Vec::with_capacity(count);
    for chunk in chunks.into_iter().rev() {
        entries.extend(chunk);
    }
    if let Some(t) = tail {
        let skip = entries.len().saturating_sub(t);
        entries.drain(..skip);
    }
    Ok(Snapshot {
        entries,
        current,
        found,
    })
}

/// Reads all entries, oldest rotated file first, optionally only the last
/// `tail` ones. An unterminated last line (a write in progress) and invalid
/// lines are skipped. Fails with a "not found" error (see
/// [`LogError::is_not_found`]) if there is no log file at all.
pub fn read_all(path: &Path, tail: Option<usize>) -> Result<Vec<LogEntry>, LogError> {
    let snap = snapshot(path, tail)?;
    if !snap.found {
        return Err(LogError::io(
            "read log file",
            path,
            io::Error::from(io::ErrorKind::NotFound),
        ));
    }
    Ok(snap.entries)
}

/// After the file we were reading was rotated away: the files written after
/// it, oldest first, ending with the current file. Empty if the current
/// file does not exist (yet).
fn successors(path: &Path, old: FileId) -> Result<Vec<LineFile>, LogError> {
    let Some(current) = open_optional(path)? else {
        return Ok(Vec::new());
    };
    let mut seen = vec![current.id];
    let mut rotated = open_rotated(path, &mut seen)?; // newest first
                                                      // `.k+1` is our old file: `.k` .. `.1` are newer. If it is not there, it
                                                      // was deleted (we fell more than max_files rotations behind) and every
                                                      // remaining rotated file is newer.
    if let Some(k) = rotated.iter().position(|f| f.id == old) {
        rotated.truncate(k);
    }
    rotated.reverse();
    rotated.push(current);
    Ok(rotated)
}

/// Reads everything written so far, following rotations. Returns
/// `Ok(false)` if `on_entry` asked to stop.
fn drain(
    path: &Path,
    cur: &mut LineFile,
    on_entry: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<bool, LogError> {
    loop {
        if !cur.read_lines(on_entry)? {
            return Ok(false);
        }
        let len = cur
            .file
            .metadata()
            .map_err(|e| LogError::io("stat log file", &cur.path, e))?
            .len();
        if len < cur.offset {
            tracing::debug!(path = %cur.path.display(), "log file truncated, reading from start");
            cur.rewind()?;
            continue;
        }
        match fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == cur.id => return Ok(true),
            Ok(_) => {
                // Rotated: the writer finished our file before renaming it;
                // read what it wrote since our last read (through our handle,
                // which stays valid whatever the file is called now).
                if !cur.read_lines(on_entry)? {
                    return Ok(false);
                }
                let mut next = successors(path, cur.id)?;
                let Some(newest) = next.pop() else {
                    return Ok(true);
                };
                for mut f in next {
                    if !f.read_lines(on_entry)? {
                        return Ok(false);
                    }
                }
                *cur = newest;
            }
            // Between rename and re-creation: try again at the next poll.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(LogError::io("stat log file", path, e)),
        }
    }
}

/// Follows a container log: passes existing entries (the last `tail` ones if
/// given) to `on_entry`, then blocks, polling every [`POLL_INTERVAL`] for new
/// ones, across rotations and in-place truncation. Waits for the log file to
/// appear if it does not exist yet.
///
/// Returns when `on_entry` returns `false`, or when `stop()` returns `true`
/// after everything written up to then has been passed on. A follower that
/// falls more than `max_files` rotations behind loses the rotated-out data.
pub fn follow(
    path: &Path,
    tail: Option<usize>,
    stop: impl Fn() -> bool,
    mut on_entry: impl FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let (entries, mut cur) = loop {
        let snap = snapshot(path, tail)?;
        if let Some(cur) = snap.current {
            break (snap.entries, cur);
        }
        if stop() {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    for e in entries {
        if !on_entry(e) {
            return Ok(());
        }
    }
    loop {
        if !drain(path, &mut cur, &mut on_entry)? {
            return Ok(());
        }
        if stop() {
            drain(path, &mut cur, &mut on_entry)?;
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    fn cfg(max_size: u64, max_files: u32) -> LogConfig {
        LogConfig {
            max_size,
            max_files,
        }
    }

    fn big() -> LogConfig {
        cfg(u64::MAX, 3)
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        (dir, path)
    }

    fn summary(entries: &[LogEntry]) -> Vec<(Stream, bool, String)> {
        entries
            .iter()
            .map(|e| (e.stream, e.partial, e.content.clone()))
            .collect()
    }

    fn f(stream: Stream, s: &str) -> (Stream, bool, String) {
        (stream, false, s.to_string())
    }

    fn p(stream: Stream, s: &str) -> (Stream, bool, String) {
        (stream, true, s.to_string())
    }

    fn of_stream(entries: &[LogEntry], stream: Stream) -> Vec<LogEntry> {
        entries
            .iter()
            .filter(|e| e.stream == stream)
            .cloned()
            .collect()
    }

    use Stream::{Stderr, Stdout};

    #[test]
    fn writer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<LogWriter>();
        assert_send::<LogError>();
    }

    #[test]
    fn timestamp_format_known_values() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(format_rfc3339(t), "2023-11-14T22:13:20.000000123Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 999_999_999); // leap day 2000
        assert_eq!(format_rfc3339(t), "2000-02-29T00:00:00.999999999Z");
        let t = UNIX_EPOCH - Duration::new(1, 500_000_000);
        assert_eq!(format_rfc3339(t), "1969-12-31T23:59:58.500000000Z");
    }

    #[test]
    fn timestamp_parse() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.000000123Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20.000000123+02:00"),
            Some(t)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5Z"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-02-29T22:13:20Z",
            "2023-11-14T24:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.1234567890Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14 22:13:20Z",
            "2023-1a-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn multiple_lines_in_one_chunk() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        w.write_chunk(Stdout, b"one\ntwo\nthree\n").unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(
            summary(&e),
            vec![f(Stdout, "one"), f(Stdout, "two"), f(Stdout, "three")]
        );
        assert!(e.iter().all(|e| e.timestamp().is_some()));
    }

    #[test]
    fn line_split_across_chunks() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        w.write_chunk(Stdout, b"hel").unwrap();
        assert!(read_all(&path, None).unwrap().is_empty());
        w.write_chunk(Stdout, b"lo wo").unwrap();
        w.write_chunk(Stdout, b"rld\nnext").unwrap();
        w.write_chunk(Stdout, b"\n").unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(
            summary(&e),
            vec![f(Stdout, "hello world"), f(Stdout, "next")]
        );
    }

    #[test]
    fn crlf_and_empty_lines() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        w.write_chunk(Stdout, b"dos\r\n\n\r\n\nlast").unwrap();
        w.flush_partial(Stdout).unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(
            summary(&e),
            vec![
                f(Stdout, "dos\r"),
                f(Stdout, ""),
                f(Stdout, "\r"),
                f(Stdout, ""),
                p(Stdout, "last"),
            ]
        );
        assert_eq!(raw_content(&e), b"dos\r\n\n\r\n\nlast");
        // An empty F line is written with the separating space.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.lines().nth(1).unwrap().ends_with(" stdout F "));
    }

    #[test]
    fn flush_partial_only_when_buffered() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        w.flush_partial(Stdout).unwrap();
        w.write_chunk(Stdout, b"Password: ").unwrap();
        w.flush_partial(Stdout).unwrap();
        w.flush_partial(Stdout).unwrap();
        w.write_chunk(Stdout, b"ok\n").unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(summary(&e), vec![p(Stdout, "Password: "), f(Stdout, "ok")]);
        assert_eq!(raw_content(&e), b"Password: ok\n");
    }

    #[test]
    fn drop_flushes_partial_lines() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        w.write_chunk(Stderr, b"no newline").unwrap();
        drop(w);
        let e = read_all(&path, None).unwrap();
        assert_eq!(summary(&e), vec![p(Stderr, "no newline")]);
    }

    #[test]
    fn long_line_is_split() {
        let (_d, path) = setup();
        let line: Vec<u8> = (0..40_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = line.clone();
        input.push(b'\n');

        let mut w = LogWriter::open(&path, big()).unwrap();
        w.write_chunk(Stdout, &input).unwrap();
        // Same line again, fed in small chunks.
        for c in input.chunks(1000) {
            w.write_chunk(Stderr, c).unwrap();
        }
        // Exactly MAX_LINE_CONTENT bytes is not split.
        let exact = vec![b'x'; MAX_LINE_CONTENT];
        w.write_chunk(Stdout, &exact).unwrap();
        w.write_chunk(Stdout, b"\n").unwrap();
        let e = read_all(&path, None).unwrap();

        for stream in [Stdout, Stderr] {
            let s = of_stream(&e, stream);
            let shape: Vec<(bool, usize)> = s
                .iter()
                .take(3)
                .map(|e| (e.partial, e.content.len()))
                .collect();
            assert_eq!(
                shape,
                vec![
                    (true, MAX_LINE_CONTENT),
                    (true, MAX_LINE_CONTENT),
                    (false, 40_000 - 2 * MAX_LINE_CONTENT)
                ]
            );
            assert_eq!(raw_content(&s[..3]), input);
        }
        let s = of_stream(&e, Stdout);
        assert_eq!(s.len(), 4);
        assert!(!s[3].partial);
        assert_eq!(s[3].content.len(), MAX_LINE_CONTENT);
    }

    #[test]
    fn long_line_split_respects_utf8() {
        let (_d, path) = setup();
        let text = "é€😀".repeat(3000) + "\n";
        let mut w = LogWriter::open(&path, big()).unwrap();
        for c in text.as_bytes().chunks(777) {
            w.write_chunk(Stdout, c).unwrap();
        }
        let e = read_all(&path, None).unwrap();
        assert!(e.len() > 1);
        assert!(e
            .iter()
            .all(|e| e.content.len() <= MAX_LINE_CONTENT && !e.content.contains('\u{FFFD}')));
        assert_eq!(raw_content(&e), text.as_bytes());
    }

    #[test]
    fn streams_are_buffered_separately() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        w.write_chunk(Stdout, b"out-a").unwrap();
        w.write_chunk(Stderr, b"err-a").unwrap();
        w.write_chunk(Stderr, b"err-b\nerr-c").unwrap();
        w.write_chunk(Stdout, b"out-b\n").unwrap();
        w.flush_partial(Stdout).unwrap();
        w.flush_partial(Stderr).unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(
            summary(&e),
            vec![
                f(Stderr, "err-aerr-b"),
                f(Stdout, "out-aout-b"),
                p(Stderr, "err-c"),
            ]
        );
        assert_eq!(raw_content(&of_stream(&e, Stdout)), b"out-aout-b\n");
        assert_eq!(raw_content(&of_stream(&e, Stderr)), b"err-aerr-b\nerr-c");
    }

    fn file_count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let (d, path) = setup();
        // Each line is ~47 bytes; ~4 lines per file.
        let mut w = LogWriter::open(&path, cfg(200, 3)).unwrap();
        for i in 0..100 {
            w.write_chunk(Stdout, format!("line {i:04}\n").as_bytes())
                .unwrap();
            assert!(file_count(d.path()) <= 3);
            for p in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
                if let Ok(m) = fs::metadata(&p) {
                    assert!(m.len() <= 200, "{} is {} bytes", p.display(), m.len());
                }
            }
        }
        assert!(path.exists());
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());

        let e = read_all(&path, None).unwrap();
        assert!(e.len() >= 8 && e.len() < 100, "{}", e.len());
        let first: usize = e[0].content[5..].parse().unwrap();
        let expected: Vec<String> = (first..100).map(|i| format!("line {i:04}")).collect();
        let got: Vec<String> = e.iter().map(|e| e.content.clone()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn rotation_removes_files_beyond_a_smaller_limit() {
        let (d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(100, 5)).unwrap();
        for i in 0..50 {
            w.write_chunk(Stdout, format!("{i}\n").as_bytes()).unwrap();
        }
        drop(w);
        assert_eq!(file_count(d.path()), 5);
        let mut w = LogWriter::open(&path, cfg(100, 2)).unwrap();
        for i in 50..60 {
            w.write_chunk(Stdout, format!("{i}\n").as_bytes()).unwrap();
        }
        assert_eq!(file_count(d.path()), 2);
        let got: Vec<String> = read_all(&path, None)
            .unwrap()
            .into_iter()
            .map(|e| e.content)
            .collect();
        assert_eq!(got.last().unwrap(), "59");
    }

    #[test]
    fn oversized_line_goes_into_an_empty_file() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(50, 3)).unwrap();
        w.write_chunk(Stdout, &[b'z'; 200]).unwrap();
        w.write_chunk(Stdout, b"\n").unwrap();
        w.write_chunk(Stdout, b"small\n").unwrap();
        assert!(fs::metadata(rotated_path(&path, 1)).unwrap().len() > 200);
        let e = read_all(&path, None).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].content, "small");
    }

    #[test]
    fn single_file_truncates_in_place() {
        let (d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(200, 1)).unwrap();
        for i in 0..50 {
            w.write_chunk(Stdout, format!("line {i:04}\n").as_bytes())
                .unwrap();
            assert!(fs::metadata(&path).unwrap().len() <= 200);
        }
        assert_eq!(file_count(d.path()), 1);
        let e = read_all(&path, None).unwrap();
        assert!(!e.is_empty());
        assert_eq!(e.last().unwrap().content, "line 0049");
    }

    #[test]
    fn reopen_appends_and_keeps_size() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(200, 2)).unwrap();
        w.write_chunk(Stdout, b"first\n").unwrap();
        drop(w);
        let mut w = LogWriter::open(&path, cfg(200, 2)).unwrap();
        w.write_chunk(Stdout, b"second\n").unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(summary(&e), vec![f(Stdout, "first"), f(Stdout, "second")]);
        // Existing size counts towards rotation.
        for i in 0..3 {
            w.write_chunk(Stdout, format!("more {i}\n").as_bytes())
                .unwrap();
        }
        assert!(rotated_path(&path, 1).exists());
    }

    #[test]
    fn invalid_config_is_rejected() {
        let (_d, path) = setup();
        let err = LogWriter::open(&path, cfg(100, 0)).unwrap_err();
        assert!(err.to_string().contains("container.log"), "{err}");
        assert!(err.to_string().starts_with("invalid log config"), "{err}");
        assert!(LogWriter::open(&path, cfg(0, 3)).is_err());
    }

    #[test]
    fn config_serde_defaults() {
        let c: LogConfig = serde_json::from_str(r#"{"max_files": 5}"#).unwrap();
        assert_eq!(c, cfg(10 * 1024 * 1024, 5));
        assert_eq!(LogConfig::default(), cfg(10 * 1024 * 1024, 3));
        assert_eq!(serde_json::to_string(&Stdout).unwrap(), r#""stdout""#);
        assert_eq!("stderr".parse::<Stream>().unwrap(), Stderr);
        assert!("stdin".parse::<Stream>().is_err());
    }

    #[test]
    fn tail_across_rotated_files() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(200, 10)).unwrap();
        for i in 0..30 {
            w.write_chunk(Stdout, format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        assert!(rotated_path(&path, 3).exists());
        let all = read_all(&path, None).unwrap();
        assert_eq!(all.len(), 30);
        let t = read_all(&path, Some(7)).unwrap();
        assert_eq!(t, all[23..].to_vec());
        assert_eq!(read_all(&path, Some(0)).unwrap(), vec![]);
        assert_eq!(read_all(&path, Some(1000)).unwrap(), all);
    }

    #[test]
    fn read_all_missing_file() {
        let (_d, path) = setup();
        let err = read_all(&path, None).unwrap_err();
        assert!(err.is_not_found());
        let msg = err.to_string();
        assert!(msg.starts_with("failed to read log file"), "{msg}");
        assert!(msg.contains("container.log"), "{msg}");
    }

    #[test]
    fn read_all_skips_garbage_and_unterminated_tail() {
        let (_d, path) = setup();
        let good = "2024-01-02T03:04:05.000000006Z stdout F ok\n";
        let mut data = Vec::new();
        data.extend_from_slice(b"garbage\n");
        data.extend_from_slice(good.as_bytes());
        data.extend_from_slice(&[b'x'; 100_000]);
        data.extend_from_slice(b"\n");
        data.extend_from_slice(good.as_bytes());
        data.extend_from_slice(b"2024-01-02T03:04:05.000000006Z stdout F half");
        fs::write(&path, data).unwrap();
        let e = read_all(&path, None).unwrap();
        assert_eq!(summary(&e), vec![f(Stdout, "ok"), f(Stdout, "ok")]);
        assert_eq!(e[0].time, "2024-01-02T03:04:05.000000006Z");
    }

    #[test]
    fn parse_line_accepts_valid_lines() {
        let e = parse_line("2024-01-02T03:04:05.123456789Z stderr P  two  spaces \n").unwrap();
        assert_eq!(e.time, "2024-01-02T03:04:05.123456789Z");
        assert_eq!(e.stream, Stderr);
        assert!(e.partial);
        assert_eq!(e.content, " two  spaces ");
        let e = parse_line("2024-01-02T03:04:05+01:00 stdout F").unwrap();
        assert_eq!(e.content, "");
        let e = parse_line("2024-01-02T03:04:05Z stdout F \r").unwrap();
        assert_eq!(e.content, "\r");
        let e = parse_line_bytes(b"2024-01-02T03:04:05Z stdout F \xff").unwrap();
        assert_eq!(e.content, "\u{FFFD}");
    }

    #[test]
    fn parse_line_rejects_garbage() {
        let cases = [
            ("", "empty line"),
            ("hello", "expected"),
            ("hello world F x", "invalid RFC3339 timestamp"),
            (
                "2024-13-02T03:04:05Z stdout F x",
                "invalid RFC3339 timestamp",
            ),
            ("2024-01-02T03:04:05Z stdin F x", "invalid stream"),
            ("2024-01-02T03:04:05Z stdout X x", "invalid tag"),
            ("2024-01-02T03:04:05Z stdout", "invalid stream"),
            ("2024-01-02T03:04:05Z stdout ", "invalid tag"),
            ("2024-01-02T03:04:05Z stdout Fx", "missing space after tag"),
        ];
        for (line, reason) in cases {
            let err = parse_line(line).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, LogError::Parse { .. }));
            assert!(msg.starts_with("invalid log line"), "{msg}");
            assert!(msg.contains(reason), "{line:?}: {msg}");
        }
        let long = "x".repeat(1000);
        let msg = parse_line(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn remove_logs_removes_all_files() {
        let (d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(100, 4)).unwrap();
        for i in 0..40 {
            w.write_chunk(Stdout, format!("{i}\n").as_bytes()).unwrap();
        }
        drop(w);
        assert_eq!(file_count(d.path()), 4);
        remove_logs(&path).unwrap();
        assert_eq!(file_count(d.path()), 0);
        remove_logs(&path).unwrap();
    }

    /// Runs `follow` in a thread, sending entries over a channel.
    fn spawn_follow(
        path: &Path,
        tail: Option<usize>,
    ) -> (
        mpsc::Receiver<LogEntry>,
        Arc<AtomicBool>,
        std::thread::JoinHandle<Result<(), LogError>>,
    ) {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = path.to_path_buf();
        let h = std::thread::spawn(move || {
            follow(
                &path,
                tail,
                move || stop2.load(Ordering::SeqCst),
                move |e| tx.send(e).is_ok(),
            )
        });
        (rx, stop, h)
    }

    fn recv_n(rx: &mpsc::Receiver<LogEntry>, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("follow did not deliver an entry in time")
                    .content
            })
            .collect()
    }

    fn lines(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("line {i:04}")).collect()
    }

    fn write_lines(w: &mut LogWriter, range: std::ops::Range<usize>) {
        for l in lines(range) {
            w.write_chunk(Stdout, format!("{l}\n").as_bytes()).unwrap();
        }
    }

    #[test]
    fn follow_sees_appends_across_rotation() {
        let (_d, path) = setup();
        // ~47 bytes per line, 4 lines per file.
        let mut w = LogWriter::open(&path, cfg(200, 3)).unwrap();
        write_lines(&mut w, 0..6);
        let (rx, stop, h) = spawn_follow(&path, Some(2));
        assert_eq!(recv_n(&rx, 2), lines(4..6));
        // Each batch causes at most one rotation.
        for batch in 0..10 {
            let r = 6 + batch * 3..9 + batch * 3;
            write_lines(&mut w, r.clone());
            assert_eq!(recv_n(&rx, 3), lines(r));
        }
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn follow_keeps_up_with_fast_writer() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(500, 1000)).unwrap();
        let (rx, stop, h) = spawn_follow(&path, None);
        std::thread::sleep(Duration::from_millis(20));
        let writer = std::thread::spawn(move || {
            for chunk in 0..20 {
                write_lines(&mut w, chunk * 50..(chunk + 1) * 50);
                std::thread::sleep(Duration::from_millis(7));
            }
        });
        writer.join().unwrap();
        // Everything written before stop is delivered.
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
        let got: Vec<String> = rx.try_iter().map(|e| e.content).collect();
        assert_eq!(got, lines(0..1000));
    }

    #[test]
    fn follow_drains_before_stopping() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(300, 5)).unwrap();
        let (rx, stop, h) = spawn_follow(&path, None);
        std::thread::sleep(Duration::from_millis(80));
        write_lines(&mut w, 0..20);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
        let got: Vec<String> = rx.try_iter().map(|e| e.content).collect();
        assert_eq!(got, lines(0..20));
    }

    #[test]
    fn follow_handles_truncation_in_place() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(200, 1)).unwrap();
        write_lines(&mut w, 0..3);
        let (rx, stop, h) = spawn_follow(&path, None);
        assert_eq!(recv_n(&rx, 3), lines(0..3));
        // One more line fits; the next truncates and starts over.
        write_lines(&mut w, 3..4);
        assert_eq!(recv_n(&rx, 1), lines(3..4));
        write_lines(&mut w, 4..5);
        assert_eq!(fs::metadata(&path).unwrap().len(), 50);
        assert_eq!(recv_n(&rx, 1), lines(4..5));
        write_lines(&mut w, 5..6);
        assert_eq!(recv_n(&rx, 1), lines(5..6));
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
    }

    #[test]
    fn follow_waits_for_the_file() {
        let (_d, path) = setup();
        let (rx, stop, h) = spawn_follow(&path, Some(10));
        std::thread::sleep(Duration::from_millis(120));
        let mut w = LogWriter::open(&path, big()).unwrap();
        write_lines(&mut w, 0..2);
        assert_eq!(recv_n(&rx, 2), lines(0..2));
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
    }

    #[test]
    fn follow_stops_when_on_entry_says_so() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, big()).unwrap();
        write_lines(&mut w, 0..10);
        let mut got = Vec::new();
        follow(
            &path,
            None,
            || false,
            |e| {
                got.push(e.content);
                got.len() < 4
            },
        )
        .unwrap();
        assert_eq!(got, lines(0..4));
    }

    #[test]
    fn follow_with_stop_already_set_returns_existing() {
        let (_d, path) = setup();
        let mut w = LogWriter::open(&path, cfg(200, 4)).unwrap();
        write_lines(&mut w, 0..10);
        let mut got = Vec::new();
        follow(
            &path,
            Some(3),
            || true,
            |e| {
                got.push(e.content);
                true
            },
        )
        .unwrap();
        assert_eq!(got, lines(7..10));
        // No file at all: returns at once when stopped.
        let (_d2, missing) = setup();
        follow(&missing, None, || true, |_| true).unwrap();
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => "[a-c\\n\\r é€😀]{0,40}",
                1 => ("[x€]", 16_000usize..17_000).prop_map(|(c, n)| c.repeat(n)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn chunks_round_trip(
                ops in proptest::collection::vec((any::<bool>(), piece(), any::<usize>()), 0..24),
            ) {
                let (_d, path) = setup();
                let mut w = LogWriter::open(&path, big()).unwrap();
                let mut expected = [Vec::new(), Vec::new()];
                for (is_err, s, split) in &ops {
                    let stream = if *is_err { Stderr } else { Stdout };
                    let bytes = s.as_bytes();
                    // Split anywhere, even inside a UTF-8 sequence.
                    let at = split % (bytes.len() + 1);
                    w.write_chunk(stream, &bytes[..at]).unwrap();
                    w.write_chunk(stream, &bytes[at..]).unwrap();
                    expected[stream.index()].extend_from_slice(bytes);
                }
                w.flush_partial(Stdout).unwrap();
                w.flush_partial(Stderr).unwrap();
                let e = read_all(&path, None).unwrap();
                prop_assert!(e.iter().all(|e| e.content.len() <= MAX_LINE_CONTENT));
                prop_assert!(e.iter().all(|e| !e.content.contains('\n')));
                for stream in [Stdout, Stderr] {
                    let got = raw_content(&of_stream(&e, stream));
                    prop_assert_eq!(&got, &expected[stream.index()]);
                }
            }

            #[test]
            fn timestamp_round_trip(secs in MIN_SECS..=MAX_SECS, nanos in 0u32..1_000_000_000) {
                let t = if secs >= 0 {
                    UNIX_EPOCH + Duration::new(secs as u64, nanos)
                } else {
                    UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
                };
                let s = format_rfc3339(t);
                prop_assert_eq!(s.len(), 30);
                prop_assert_eq!(parse_rfc3339(&s), Some(t));
            }
        }
    }
}
