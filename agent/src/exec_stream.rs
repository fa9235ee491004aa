//! Streaming exec (`clusterctl exec -i/-t`): a WebSocket carrying the command's stdin, output,
//! terminal resizes and exit status (protocol in `flotilla_api::exec_stream`). With a terminal
//! the runtime's helper hands back the master end of a pseudo-terminal opened in the
//! container's devpts; without one the helper's own pipes are the command's stdio.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use flotilla_api::exec_stream::{
    frame, ExecStatus, ExecStreamQuery, TerminalSize, PROTOCOL, RESIZE, STATUS, STDERR, STDIN,
    STDOUT,
};
use flotilla_runtime::runtime::{ConsoleSocket, ExecOptions};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

use crate::server::{blocking, ApiError, AppState};

type Tx = SplitSink<WebSocket, Message>;
type Rx = SplitStream<WebSocket>;

/// How long a hung-up command gets between SIGTERM and SIGKILL of its helper.
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// After the command exits, output still buffered in the terminal is read this long at most
/// (a background process may hold the terminal open).
const DRAIN: Duration = Duration::from_millis(300);

pub async fn exec_stream(
    State(s): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let q = ExecStreamQuery::parse(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut env = q.env.clone();
    if q.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let opts = ExecOptions {
        args: q.command.clone(),
        env,
        cwd: q.cwd.clone().map(Into::into),
        ..Default::default()
    };
    // Everything that can be refused is refused here, as a problem, before the upgrade.
    let rt = s.rt.clone();
    let tty = q.tty;
    let size = q.size.map(|z| (z.rows, z.cols));
    let (cmd, console) = blocking(move || {
        if tty {
            rt.exec_tty_command(&id, &opts, size)
                .map(|(c, s)| (c, Some(s)))
        } else {
            rt.exec_command(&id, &opts).map(|c| (c, None))
        }
    })
    .await?;
    let stdin = q.stdin;
    Ok(ws
        .protocols([PROTOCOL])
        .on_upgrade(move |socket| async move {
            let (mut tx, mut rx) = socket.split();
            let status = match console {
                Some(c) => run_tty(&mut tx, &mut rx, cmd, c, stdin).await,
                None => run_pipes(&mut tx, &mut rx, cmd, stdin).await,
            };
            let body = serde_json::to_vec(&status).expect("serializable");
            let _ = tx.send(Message::Binary(frame(STATUS, &body).into())).await;
            let _ = tx.send(Message::Close(None)).await;
        }))
}

fn status_of(st: std::process::ExitStatus) -> ExecStatus {
    use std::os::unix::process::ExitStatusExt;
    ExecStatus {
        exit_code: Some(st.code().unwrap_or(128 + st.signal().unwrap_or(0))),
        error: None,
    }
}

fn failed(msg: String) -> ExecStatus {
    ExecStatus {
        exit_code: None,
        error: Some(msg),
    }
}

/// A client message, decoded.
enum Input {
    Stdin(Vec<u8>),
    StdinClosed,
    Resize(TerminalSize),
    Gone,
    Ignore,
}

fn decode(m: Option<Result<Message, axum::Error>>) -> Input {
    match m {
        Some(Ok(Message::Binary(b))) => match b.split_first() {
            Some((&STDIN, [])) => Input::StdinClosed,
            Some((&STDIN, data)) => Input::Stdin(data.to_vec()),
            Some((&RESIZE, data)) => match serde_json::from_slice::<TerminalSize>(data) {
                Ok(z) => Input::Resize(z),
                Err(e) => {
                    tracing::debug!(error = %e, "exec stream: malformed resize ignored");
                    Input::Ignore
                }
            },
            _ => Input::Ignore,
        },
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Input::Gone,
        Some(Ok(_)) => Input::Ignore,
    }
}

/// The client went away: hang the command up, then end its helper.
async fn hang_up(child: &mut Child) -> ExecStatus {
    if let Some(pid) = child.id() {
        // The helper forwards SIGTERM to the command.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(HANGUP_GRACE, child.wait()).await {
        Ok(Ok(st)) => status_of(st),
        _ => {
            let _ = child.kill().await;
            failed("the client went away; the command was killed".into())
        }
    }
}

/// Why a helper failed before it ran the command: its stderr.
async fn helper_failure(mut child: Child, what: String) -> ExecStatus {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err).await;
    }
    let _ = child.wait().await;
    let err = err.trim().trim_start_matches("flotilla-exec: ");
    failed(if err.is_empty() { what } else { err.to_owned() })
}

async fn run_tty(
    tx: &mut Tx,
    rx: &mut Rx,
    cmd: std::process::Command,
    console: ConsoleSocket,
    stdin: bool,
) -> ExecStatus {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("starting the exec helper: {e}")),
    };
    drop(cmd);
    let master =
        match tokio::task::spawn_blocking(move || console.receive(Duration::from_secs(10))).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return helper_failure(child, e.to_string()).await,
            Err(e) => return helper_failure(child, format!("task failed: {e}")).await,
        };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same until it is dropped.
    let master = match nonblocking(master)
        .and_then(|m| unsafe { AsyncFd::register(m) }.map_err(std::io::Error::from))
    {
        Ok(m) => m,
        Err(e) => {
            let _ = child.kill().await;
            return failed(format!("exec terminal: {e}"));
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut exited: Option<ExecStatus> = None;
    let drain = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            m = rx.next(), if exited.is_none() => match decode(m) {
                Input::Stdin(data) if stdin => {
                    if let Err(e) = write_all(&master, &data).await {
                        tracing::debug!(error = %e, "exec terminal write failed");
                    }
                }
                // ^D: a terminal's end of input.
                Input::StdinClosed if stdin => { let _ = write_all(&master, b"\x04").await; }
                Input::Resize(z) => set_size(&master, z),
                Input::Gone => {
                    drop(master);
                    return hang_up(&mut child).await;
                }
                _ => {}
            },
            r = read(&master, &mut buf) => match r {
                Ok(n) if n > 0 => {
                    if tx.send(Message::Binary(frame(STDOUT, &buf[..n]).into())).await.is_err() {
                        drop(master);
                        return hang_up(&mut child).await;
                    }
                }
                // EIO: every holder of the slave end is gone.
                _ => break,
            },
            st = child.wait(), if exited.is_none() => {
                exited = Some(match st {
                    Ok(st) => status_of(st),
                    Err(e) => failed(format!("waiting for the exec helper: {e}")),
                });
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            _ = &mut drain => break,
        }
    }
    drop(master);
    match exited {
        Some(s) => s,
        None => match child.wait().await {
            Ok(st) => status_of(st),
            Err(e) => failed(format!("waiting for the exec helper: {e}")),
        },
    }
}

async fn run_pipes(
    tx: &mut Tx,
    rx: &mut Rx,
    cmd: std::process::Command,
    stdin: bool,
) -> ExecStatus {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("starting the exec helper: {e}")),
    };
    let mut input = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (mut ob, mut eb) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut exited: Option<ExecStatus> = None;
    let mut client_open = true;
    while out.is_some() || err.is_some() || exited.is_none() {
        tokio::select! {
            m = rx.next(), if client_open => match decode(m) {
                Input::Stdin(data) => {
                    if let Some(i) = input.as_mut() {
                        if i.write_all(&data).await.is_err() {
                            input = None;
                        }
                    }
                }
                Input::StdinClosed => input = None,
                Input::Gone => {
                    client_open = false;
                    input = None;
                    if exited.is_none() {
                        return hang_up(&mut child).await;
                    }
                }
                _ => {}
            },
            r = async { out.as_mut().expect("guarded").read(&mut ob).await }, if out.is_some() => match r {
                Ok(n) if n > 0 => {
                    if tx.send(Message::Binary(frame(STDOUT, &ob[..n]).into())).await.is_err() {
                        return hang_up(&mut child).await;
                    }
                }
                _ => out = None,
            },
            r = async { err.as_mut().expect("guarded").read(&mut eb).await }, if err.is_some() => match r {
                Ok(n) if n > 0 => {
                    if tx.send(Message::Binary(frame(STDERR, &eb[..n]).into())).await.is_err() {
                        return hang_up(&mut child).await;
                    }
                }
                _ => err = None,
            },
            st = child.wait(), if exited.is_none() => {
                exited = Some(match st {
                    Ok(st) => status_of(st),
                    Err(e) => failed(format!("waiting for the exec helper: {e}")),
                });
            }
        }
    }
    exited.unwrap_or_default()
}

fn nonblocking(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(fd)
}

fn set_size(master: &AsyncFd<OwnedFd>, z: TerminalSize) {
    let ws = libc::winsize {
        ws_row: z.rows,
        ws_col: z.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on our terminal fd with a valid winsize.
    unsafe { libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut g = fd.readable().await?;
        match g.try_io(|f| Ok(nix::unistd::read(f.get_ref(), buf)?)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut g = fd.writable().await?;
        match g.try_io(|f| Ok(nix::unistd::write(f.get_ref(), data)?)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
