//! What one milter connection may hold, whichever milter library reads it.
//!
//! A milter packet is a 4-byte length and that many bytes (libmilter's `mi_rd_cmd`); the
//! library holds a packet until it is whole. Postfix writes a packet at once, so a packet
//! begun and not finished is either a slow network for a moment or a client holding memory
//! on purpose: 900 connections each stopping one byte short of a 1 MiB packet held 950 MB
//! for the two hours libmilter lets a connection idle. So, read off the bytes as they pass:
//!
//! - a packet begun must be finished within [`PACKET_TIMEOUT`] (between packets a
//!   connection may idle as long as the MTA's session: an SMTP client's DATA can take long);
//! - the packets being held unfinished, across every connection, declare at most
//!   [`MAX_HELD`] bytes together; a connection whose packet would pass it is closed (its
//!   MTA applies `milter_default_action`, a tempfail). Postfix's largest packet is a body
//!   chunk of 64 KiB or a header field of at most `header_size_limit` (100 KiB), so 1,000
//!   MTA connections each in the middle of a body chunk fit (they never all are at once).
//!
//! Only a read that ends inside a packet costs a counter update, and only a wait inside one
//! a timer: a packet read whole in one go, as nearly every packet is, costs a few
//! comparisons.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::coalesce::Coalesced;

/// How long a begun packet may take to arrive whole.
pub const PACKET_TIMEOUT: Duration = Duration::from_secs(30);
/// The bytes unfinished packets may declare, all connections together.
pub const MAX_HELD: usize = 64 * 1024 * 1024;
/// The largest packet a milter library takes (libmilter's `MILTER_MAX_DATA_SIZE` at most).
pub const MAX_PACKET: usize = 1024 * 1024 - 1;

/// The bytes declared by the packets held unfinished now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A listener whose connections are read through [`PacketBounds`] (and written through
/// [`Coalesced`]: a message's modifications leave with its reply).
pub struct Bounded<L>(pub L);

impl<L: indymilter::Listener> indymilter::Listener for Bounded<L> {
    type Io = PacketBounds<Coalesced<L::Io>>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.0
            .poll_accept(cx)
            .map(|r| r.map(|io| PacketBounds::new(Coalesced::new(io), &HELD, MAX_HELD)))
    }
}

/// Where a connection's reading stands in the packet framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Framing {
    /// Bytes of the length read so far (0 to 3: between packets or inside the length).
    length_bytes: u8,
    length: u32,
    /// Bytes of the packet's data still to come.
    remaining: usize,
}

impl Framing {
    fn inside_a_packet(&self) -> bool {
        self.length_bytes > 0 || self.remaining > 0
    }

    /// Reads `bytes` off; `Err` for a packet larger than any library takes.
    fn advance(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.length = (self.length << 8) | u32::from(bytes[0]);
            self.length_bytes += 1;
            bytes = &bytes[1..];
            if self.length_bytes == 4 {
                let length = self.length as usize;
                if length > MAX_PACKET {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("milter packet of {length} bytes"),
                    ));
                }
                *self = Framing {
                    remaining: length,
                    ..Framing::default()
                };
            }
        }
        Ok(())
    }

    /// What the unfinished packet declares (its length and the 4 bytes of it).
    fn declared(&self) -> usize {
        if self.remaining > 0 {
            // Not the length itself: what is left bounds what the library still takes in.
            self.remaining + 4
        } else {
            4
        }
    }
}

/// A milter connection's stream, with the bounds of this module on what it reads.
pub struct PacketBounds<S> {
    inner: S,
    framing: Framing,
    /// What this connection has counted in `held` for its unfinished packet.
    charged: usize,
    held: &'static AtomicUsize,
    max_held: usize,
    /// Running while a read waits inside a packet; made once, then reset.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<S> PacketBounds<S> {
    fn new(inner: S, held: &'static AtomicUsize, max_held: usize) -> PacketBounds<S> {
        PacketBounds {
            inner,
            framing: Framing::default(),
            charged: 0,
            held,
            max_held,
            deadline: None,
            armed: false,
        }
    }

    fn release(&mut self) {
        if self.charged > 0 {
            self.held.fetch_sub(self.charged, Ordering::Relaxed);
            self.charged = 0;
        }
    }

    /// After a read: the unfinished packet counted (once), or, between packets, its count
    /// given back and its deadline stopped.
    fn settle(&mut self) -> io::Result<()> {
        if !self.framing.inside_a_packet() {
            self.release();
            self.armed = false;
            return Ok(());
        }
        if self.charged == 0 {
            let declared = self.framing.declared();
            let before = self.held.fetch_add(declared, Ordering::Relaxed);
            self.charged = declared;
            if before + declared > self.max_held {
                self.release();
                crate::warn_throttled!(
                    "milter: unfinished packets hold more than {} MiB; closing a connection",
                    self.max_held >> 20
                );
                return Err(io::Error::other(format!(
                    "unfinished milter packets hold more than {} MiB; closing this connection",
                    self.max_held >> 20
                )));
            }
        }
        Ok(())
    }

    /// Waiting inside a packet: its deadline, set when the wait begins (a packet read whole,
    /// as nearly every one is, never sets a timer); `Err` once it has passed.
    fn wait_inside_a_packet(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.framing.inside_a_packet() {
            return Ok(());
        }
        if !self.armed {
            let at = tokio::time::Instant::now() + PACKET_TIMEOUT;
            match self.deadline.as_mut() {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        let passed = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if !passed {
            return Ok(());
        }
        crate::warn_throttled!(
            "milter: a packet not finished within {} s; closing the connection",
            PACKET_TIMEOUT.as_secs()
        );
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "a milter packet not finished within {} s",
                PACKET_TIMEOUT.as_secs()
            ),
        ))
    }
}

impl<S> Drop for PacketBounds<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PacketBounds<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.framing.advance(&buf.filled()[before..])?;
                Poll::Ready(this.settle())
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.wait_inside_a_packet(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PacketBounds<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Where the framing stands after `bytes`, fed whole or in pieces of each size.
    #[test]
    fn the_framing_is_read_the_same_however_it_is_cut() {
        let mut stream = Vec::new();
        for data in [&b"O"[..], b"Cclient\0", b"", &[b'B'; 300]] {
            stream.extend_from_slice(&(data.len() as u32).to_be_bytes());
            stream.extend_from_slice(data);
        }
        stream.extend_from_slice(&[0, 0, 1]); // a length begun
        for size in 1..=stream.len() {
            let mut f = Framing::default();
            for piece in stream.chunks(size) {
                f.advance(piece).unwrap();
            }
            assert_eq!(f.length_bytes, 3, "{size}");
            assert!(f.inside_a_packet());
        }
        let mut whole = Framing::default();
        whole.advance(&stream[..stream.len() - 3]).unwrap();
        assert!(!whole.inside_a_packet());
        let mut huge = Framing::default();
        assert!(
            huge.advance(&(MAX_PACKET as u32 + 1).to_be_bytes())
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_packet_is_given_its_time_and_no_more() {
        static HELD_HERE: AtomicUsize = AtomicUsize::new(0);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut server = PacketBounds::new(server, &HELD_HERE, MAX_HELD);
        let mut buf = vec![0u8; 1 << 20];
        // Idle between packets: no deadline.
        let idle = tokio::time::timeout(Duration::from_secs(3600), server.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection is the MTA's to keep");
        // A packet one byte short of whole.
        client.write_all(&1000u32.to_be_bytes()).await.unwrap();
        client.write_all(&[b'B'; 999]).await.unwrap();
        let mut read = 0;
        while read < 1003 {
            read += server.read(&mut buf).await.unwrap();
        }
        assert_eq!(HELD_HERE.load(Ordering::Relaxed), 1 + 4);
        let stalled = server.read(&mut buf).await.unwrap_err();
        assert_eq!(stalled.kind(), io::ErrorKind::TimedOut);
        drop(server);
        assert_eq!(HELD_HERE.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn unfinished_packets_together_are_bounded() {
        static HELD_HERE: AtomicUsize = AtomicUsize::new(0);
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        let mut buf = vec![0u8; 64];
        for _ in 0..3 {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut server = PacketBounds::new(server, &HELD_HERE, 2_200_000);
            client.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
            client.write_all(b"B").await.unwrap();
            let result = server.read(&mut buf).await;
            clients.push(client);
            servers.push((server, result.is_ok()));
        }
        let open: Vec<bool> = servers.iter().map(|(_, ok)| *ok).collect();
        assert_eq!(open, [true, true, false], "the third would pass the bound");
        assert_eq!(HELD_HERE.load(Ordering::Relaxed), 2 * (999_999 + 4));
        // A packet finished gives its share back.
        let (server, _) = &mut servers[0];
        let write = clients[0].write_all(&[b'B'; 999_999]);
        let read = async {
            let (mut read, mut big) = (0, vec![0u8; 1 << 16]);
            while read < 999_999 {
                read += server.read(&mut big).await.unwrap();
            }
        };
        let (written, ()) = tokio::join!(write, read);
        written.unwrap();
        assert_eq!(HELD_HERE.load(Ordering::Relaxed), 999_999 + 4);
    }
}
