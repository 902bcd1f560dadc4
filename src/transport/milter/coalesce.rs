//! Replies that leave together: a message's modifications go out with its final reply.
//!
//! At end of message a milter sends its modifications (an `Authentication-Results` field
//! inserted, forged ones changed away) and then its final reply (continue, accept, reject, …).
//! The milter library writes and flushes each packet on its own, one `send` each, and the MTA
//! reads none of them before the final reply (libmilter's protocol, Postfix's
//! `milter8_event`: modification requests are read until a reply). So a modification packet
//! is held when flushed, and leaves with the next packet that is not one — in one `send`.
//! Everything else (every reply the MTA waits for, `progress`, negotiation) is written when
//! flushed, as before; a read or a shutdown writes what is held first, so nothing is held
//! while this side waits for the MTA.
//!
//! What is held is bounded by what this milter writes in one message (a few header fields);
//! past [`MAX_HELD`] it is written at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held at most before they are written regardless.
pub const MAX_HELD: usize = 64 * 1024;

/// The modification requests (libmilter's `mfdef.h`, `SMFIR_*`): the MTA reads them until a
/// reply, answering none.
const MODIFICATIONS: &[u8] = b"+-2behimq";

/// Where the bytes written stand in the packet framing (a 4-byte length, a kind, the rest).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Written {
    length_bytes: u8,
    length: u32,
    /// Bytes of the packet after its length still to come (its kind byte first).
    remaining: usize,
}

impl Written {
    /// Reads `bytes` off: whether a packet other than a modification began in them.
    fn advance(&mut self, mut bytes: &[u8]) -> bool {
        let mut reply = false;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                if self.length as usize == self.remaining {
                    reply |= !MODIFICATIONS.contains(&bytes[0]);
                }
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.length_bytes == 0 {
                self.length = 0;
            }
            self.length = (self.length << 8) | u32::from(bytes[0]);
            self.length_bytes += 1;
            bytes = &bytes[1..];
            if self.length_bytes == 4 {
                // A packet of length 0 has no kind: nothing a milter library writes; sent.
                reply |= self.length == 0;
                self.length_bytes = 0;
                self.remaining = self.length as usize;
            }
        }
        reply
    }

    fn between_packets(&self) -> bool {
        self.length_bytes == 0 && self.remaining == 0
    }
}

/// A milter connection's stream whose modification packets wait for the reply after them.
pub struct Coalesced<S> {
    inner: S,
    held: Vec<u8>,
    /// Of `held`, the bytes already written.
    sent: usize,
    /// Whether `held` must be written at the next flush (a reply is in it, or it is large).
    due: bool,
    written: Written,
}

impl<S> Coalesced<S> {
    pub fn new(inner: S) -> Coalesced<S> {
        Coalesced {
            inner,
            held: Vec::new(),
            sent: 0,
            due: false,
            written: Written::default(),
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Writes everything held.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.held.clear();
        self.sent = 0;
        self.due = false;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() {
            std::task::ready!(this.poll_send(cx))?;
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.held.len() >= MAX_HELD {
            std::task::ready!(this.poll_send(cx))?;
        }
        this.due |= this.written.advance(buf);
        this.held.extend_from_slice(buf);
        this.due |= this.held.len() >= MAX_HELD;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Only whole modification packets wait; anything else goes now.
        if !this.due && this.written.between_packets() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn packet(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(data);
        p
    }

    /// A stream that records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `packets` as the library does (each written, then flushed), cut into pieces of
    /// `size` bytes: what reached the socket, write by write.
    async fn written(packets: &[Vec<u8>], size: usize) -> Vec<Vec<u8>> {
        let mut stream = Coalesced::new(Recorder::default());
        for p in packets {
            for piece in p.chunks(size) {
                stream.write_all(piece).await.unwrap();
            }
            stream.flush().await.unwrap();
        }
        stream.inner.writes
    }

    #[tokio::test]
    async fn modifications_leave_with_the_reply_after_them_however_they_are_cut() {
        let insert = packet(b'i', b"\0\0\0\x01Authentication-Results\0mx; atsms=pass\0");
        let change = packet(b'm', b"\0\0\0\x02Authentication-Results\0\0");
        let reply = packet(b'c', b"");
        let all = [insert.clone(), change.clone(), reply.clone()].concat();
        for size in 1..=all.len() {
            let writes = written(&[insert.clone(), change.clone(), reply.clone()], size).await;
            assert_eq!(writes.concat(), all, "{size}");
            assert_eq!(writes.len(), 1, "one write, cut in pieces of {size}");
        }
    }

    #[tokio::test]
    async fn every_other_packet_goes_when_flushed() {
        let packets = [
            packet(b'O', &[0; 12]),
            packet(b'p', b""),
            packet(b'c', b""),
            packet(b'y', b"451 4.7.1 later\0"),
            packet(b'a', b""),
        ];
        assert_eq!(written(&packets, 1 << 20).await, packets.to_vec());
    }

    #[tokio::test]
    async fn what_is_held_goes_before_a_read_and_at_shutdown() {
        let insert = packet(b'h', b"X\0y\0");
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut stream = Coalesced::new(server);
        stream.write_all(&insert).await.unwrap();
        stream.flush().await.unwrap();
        client_write.write_all(b"next").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        let mut got = vec![0u8; insert.len()];
        client_read.read_exact(&mut got).await.unwrap();
        assert_eq!(got, insert, "written before the read");
        stream.write_all(&insert).await.unwrap();
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_read.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, insert, "written at shutdown");
    }

    #[tokio::test]
    async fn what_is_held_is_bounded() {
        let big = packet(b'h', &vec![b'x'; MAX_HELD]);
        let writes = written(std::slice::from_ref(&big), 1 << 20).await;
        assert_eq!(writes.concat(), big, "written at once past MAX_HELD");
    }
}
