//! A connection between its TLS handshake and HTTP/2: the identity named by its
//! client certificate may hold only so many connections (the next is sent an
//! HTTP/2 GOAWAY, ENHANCE_YOUR_CALM, and closed); the client's HTTP/2 preface
//! must arrive within the preface timeout; and a connection on which the client
//! sends nothing for the idle timeout is closed. So connections that complete
//! TLS and then wait cost their slot for seconds, not forever.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use super::identity;
use super::limits::{Limits, Slot};

/// What every HTTP/2 client sends first (RFC 9113, 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a connection was not handed to HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The identity holds as many connections as it may.
    #[error("entity {0:?} holds as many connections as it may")]
    TooMany(String),
    /// No preface within the timeout.
    #[error("no HTTP/2 preface within {0:?}")]
    NoPreface(Duration),
    /// Something else than the preface.
    #[error("the client did not start with the HTTP/2 preface")]
    NotHttp2,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Admits a TLS connection: takes a connection slot of its identity, then waits
/// for the HTTP/2 preface, which it hands on with the stream.
pub async fn admit(mut tls: TlsStream<TcpStream>, limits: &Limits) -> Result<Connection, Refused> {
    let settings = limits.settings();
    // The handshake verified the chain; a certificate naming no entity is
    // counted under its fingerprint and refused per call by the auth layer.
    let who = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(|leaf| identity::entity_id(leaf).unwrap_or_else(|_| identity::fingerprint(leaf)))
        .unwrap_or_default();
    let Some(slot) = limits.connection(&who) else {
        let message = format!(
            "too many connections for entity {who:?} (limit {}); close one and retry",
            settings.connections_per_identity
        );
        // Best effort, bounded: the client learns why before the close.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tls.write_all(&goaway(&message)).await?;
            tls.shutdown().await
        })
        .await;
        return Err(Refused::TooMany(who));
    };
    let wait = Duration::from_secs(settings.preface_timeout_secs);
    let mut preface = [0u8; PREFACE.len()];
    match tokio::time::timeout(wait, tls.read_exact(&mut preface)).await {
        Err(_) => return Err(Refused::NoPreface(wait)),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) if &preface != PREFACE => return Err(Refused::NotHttp2),
        Ok(Ok(_)) => {}
    }
    let idle = Duration::from_secs(settings.idle_timeout_secs);
    Ok(Connection {
        tls,
        replay: PREFACE.len(),
        idle,
        deadline: Box::pin(tokio::time::sleep(idle)),
        _slot: slot,
    })
}

/// An HTTP/2 server preface (an empty SETTINGS frame) and a GOAWAY frame with
/// ENHANCE_YOUR_CALM and `message` as its debug data.
fn goaway(message: &str) -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let debug = message.as_bytes();
    let length = 8 + debug.len();
    let mut frames = vec![0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
    frames.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_be_bytes()[1..]);
    frames.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(debug);
    frames
}

/// An admitted connection: the preface first (read to check it), then the
/// stream; reading fails once the client has sent nothing for the idle
/// timeout. Holds its identity's connection slot until dropped.
#[derive(Debug)]
pub struct Connection {
    tls: TlsStream<TcpStream>,
    /// How many bytes of the preface are still to be handed on.
    replay: usize,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.replay > 0 {
            let start = PREFACE.len() - this.replay;
            let n = this.replay.min(buf.remaining());
            buf.put_slice(PREFACE.get(start..start + n).unwrap_or_default());
            this.replay -= n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.tls).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client sent nothing for {:?}", this.idle),
                )))
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway_frames_are_well_formed() {
        let f = goaway("no");
        // SETTINGS: length 0, type 4, no flags, stream 0.
        assert_eq!(f.get(..9), Some(&[0, 0, 0, 4, 0, 0, 0, 0, 0][..]));
        // GOAWAY: length 10, type 7, stream 0, last stream 0, code 0xb, "no".
        assert_eq!(
            f.get(9..),
            Some(
                &[
                    0, 0, 10, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb, b'n', b'o'
                ][..]
            )
        );
    }
}
