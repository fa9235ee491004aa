//! `clusterctl exec -i/-t`: the controller's streaming exec (a WebSocket, protocol in
//! `flotilla_api::exec_stream`). With `-t` the local terminal goes raw for the session and
//! its size follows the window (SIGWINCH); with `-i` local input is passed until its end.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context as _, Result};
use flotilla_api::exec_stream::{
    frame, ExecStatus, ExecStreamQuery, TerminalSize, PROTOCOL, RESIZE, STATUS, STDERR, STDIN,
    STDOUT,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{seg, Client};

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The local terminal's size (of stdout, else stdin).
fn terminal_size() -> Option<TerminalSize> {
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ into a zeroed winsize.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(TerminalSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

/// Raw mode on stdin until dropped (the previous settings come back even on error).
struct RawMode(libc::termios);

impl RawMode {
    fn enable() -> Result<Self> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with valid termios structs.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                bail!(
                    "cannot read the terminal's settings: {}",
                    std::io::Error::last_os_error()
                );
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                bail!(
                    "cannot put the terminal in raw mode: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(Self(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the settings read in `enable`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// Local input, read on a thread of its own (a blocking read must not hold the runtime up
/// when the command ends first); `None` is the end of input.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut input = std::io::stdin().lock();
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Run `command` in `instance` interactively; the remote command's exit code.
pub async fn exec(
    client: &Client,
    instance: &str,
    command: Vec<String>,
    interactive: bool,
    mut tty: bool,
) -> Result<i32> {
    if tty && !std::io::stdin().is_terminal() {
        eprintln!("clusterctl: stdin is not a terminal; running without one (-t ignored)");
        tty = false;
    }
    let mut env = vec![];
    if tty {
        if let Ok(t) = std::env::var("TERM") {
            env.push(format!("TERM={t}"));
        }
    }
    let q = ExecStreamQuery {
        command,
        env,
        cwd: None,
        tty,
        stdin: interactive,
        size: if tty { terminal_size() } else { None },
    };
    let path = format!(
        "/v1/instances/{}/exec/stream?{}",
        seg(instance),
        q.to_query()
    );
    let ws = client.websocket(&path, PROTOCOL).await?;
    let _raw = if tty { Some(RawMode::enable()?) } else { None };
    session(ws, interactive, tty).await
}

async fn session(ws: Socket, interactive: bool, tty: bool) -> Result<i32> {
    let (mut tx, mut rx) = ws.split();
    let mut input = if interactive {
        Some(stdin_reader())
    } else {
        None
    };
    let mut winch = if tty {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("cannot watch the window size")?,
        )
    } else {
        None
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        tokio::select! {
            m = rx.next() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => bail!("the exec connection failed: {e}"),
                    None => bail!("the exec connection closed before the command's exit status"),
                };
                let Message::Binary(b) = m else {
                    if m.is_close() {
                        bail!("the exec connection closed before the command's exit status");
                    }
                    continue;
                };
                match b.split_first() {
                    Some((&STDOUT, data)) => {
                        out.write_all(data)?;
                        out.flush()?;
                    }
                    Some((&STDERR, data)) => {
                        err.write_all(data)?;
                        err.flush()?;
                    }
                    Some((&STATUS, data)) => {
                        let st: ExecStatus = serde_json::from_slice(data)
                            .context("malformed exit status from the server")?;
                        let _ = tx.send(Message::Close(None)).await;
                        return match (st.exit_code, st.error) {
                            (Some(c), _) => Ok(c),
                            (None, Some(e)) => bail!("exec failed: {e}"),
                            (None, None) => bail!("exec ended without an exit status"),
                        };
                    }
                    _ => {}
                }
            }
            chunk = async { input.as_mut().expect("guarded").recv().await }, if input.is_some() => {
                let data = chunk.flatten();
                let msg = frame(STDIN, data.as_deref().unwrap_or_default());
                if data.is_none() {
                    input = None;
                }
                tx.send(Message::Binary(msg.into())).await.context("sending input")?;
            }
            _ = async { winch.as_mut().expect("guarded").recv().await }, if winch.is_some() => {
                if let Some(z) = terminal_size() {
                    let body = serde_json::to_vec(&z).expect("serializable");
                    tx.send(Message::Binary(frame(RESIZE, &body).into())).await.context("sending a resize")?;
                }
            }
        }
    }
}
