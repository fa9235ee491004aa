//! The AppendEntries stream: one long-lived connection per replication stream carrying
//! length-prefixed JSON frames, request then answer, in turn.
//!
//! AppendEntries is the one RPC on the write path, sent once per entry group to each follower
//! and again to carry the new commit index. Over HTTP/2 each of them cost a stream, HPACK
//! headers, separate HEADERS and DATA writes, flow-control frames and a hand-off through the
//! client's connection task. openraft's replication sends one request at a time per follower,
//! so a plain connection owned by the caller does the same with one write and one read.
//!
//! The connection starts as an HTTP/1.1 request on the Raft listener (`GET /raft/stream` with
//! `Upgrade: flotilla-raft-append/1`), so it shares the listener, its TLS and its mTLS client
//! check with the other Raft RPCs. After `101 Switching Protocols` both sides exchange frames:
//! a big-endian `u32` length, then that many bytes of JSON (an `AppendEntriesRequest` one way,
//! a `Result<AppendEntriesResponse, RaftError>` back).

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The `Upgrade` token of the stream.
pub const PROTOCOL: &str = "flotilla-raft-append/1";

/// The path the upgrade request goes to.
pub const PATH: &str = "/raft/stream";

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 256 << 20;

/// Byte stream of a connection, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// A connection after the upgrade, buffered for reading (writes go straight through).
pub type Stream = BufReader<Box<dyn Io>>;

/// Write one frame with a single write.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Read one frame into `buf`; `Ok(false)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

/// Open a stream to the Raft listener at `addr` (`host:port`); with `tls`, a TLS connection
/// (its ALPN must offer `http/1.1`).
pub async fn connect(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let host = host_of(addr);
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            Box::new(connector.connect(name, tcp).await?)
        }
    };
    let mut stream = BufReader::new(io);
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: {PROTOCOL}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    // The answer's head: a status line, headers, an empty line.
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    if status != "101" {
        return Err(io::Error::other(format!(
            "the peer refused the append stream upgrade (status {status:?})"
        )));
    }
    Ok(stream)
}

/// `host` of `host:port`, without the brackets of an IPv6 literal.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_are_refused() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"{\"x\":1}").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        drop(a);
        let mut b = BufReader::new(b);
        let mut buf = Vec::new();
        assert!(read_frame(&mut b, &mut buf).await.unwrap());
        assert_eq!(buf, b"{\"x\":1}");
        assert!(read_frame(&mut b, &mut buf).await.unwrap());
        assert!(buf.is_empty());
        let err = read_frame(&mut b, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[tokio::test]
    async fn a_clean_end_between_frames_is_not_an_error() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut buf = Vec::new();
        assert!(!read_frame(&mut BufReader::new(b), &mut buf).await.unwrap());
    }

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("198.18.0.1:7000"), "198.18.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("controller-1:7000"), "controller-1");
    }
}
