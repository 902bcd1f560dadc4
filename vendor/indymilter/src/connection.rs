// indymilter – asynchronous milter library
// Copyright © 2021–2022 David Bürgin <dbuergin@gluet.ch>
//
// This program is free software: you can redistribute it and/or modify it under
// the terms of the GNU General Public License as published by the Free Software
// Foundation, either version 3 of the License, or (at your option) any later
// version.
//
// This program is distributed in the hope that it will be useful, but WITHOUT
// ANY WARRANTY; without even the implied warranty of MERCHANTABILITY or FITNESS
// FOR A PARTICULAR PURPOSE. See the GNU General Public License for more
// details.
//
// You should have received a copy of the GNU General Public License along with
// this program. If not, see <https://www.gnu.org/licenses/>.

// atsms-milter: this file is changed from indymilter 0.3.0 (see ../README.vendored.md).
// The stream was owned by an actor task reached through an mpsc channel and a oneshot reply
// per protocol message, and every reply was flushed on its own. Here the stream sits behind
// one asynchronous lock: reading and writing happen in the calling task (no task hand-off per
// message), and replies are buffered and written together when the session is about to wait
// for the MTA's next command (`flush`), or at once for a progress notice. Measured with
// atsms-milter's load/milter_cpu: the hand-offs and one `sendto` per reply were the largest
// share of its CPU per message after the signature check.

use crate::message::{self, reply::Reply, Message};
use bytes::BytesMut;
use std::{io, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter},
    sync::Mutex,
    time,
};
use tracing::trace;

/// What the session reads from and writes to: any stream, its type erased.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

struct Inner {
    stream: BufWriter<Box<dyn Stream>>,
    /// What has been read and not yet taken as a message.
    read: BytesMut,
    timeout: Duration,
}

/// The least the read buffer grows by (the 8 KiB of the `BufStream` it replaces: an idle
/// connection holds no more than before; a larger packet grows it to its size).
const READ_CHUNK: usize = 8 * 1024;

/// The most read-buffer room a connection keeps while idle between packets.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The write buffer's size (tokio's default): replies wait there until the next read.
const WRITE_CAPACITY: usize = 8 * 1024;

impl Inner {
    /// Reads until a whole message is in the buffer (none is yet), and takes it.
    async fn read_more(&mut self) -> io::Result<Message> {
        loop {
            // Once a large packet is consumed, its room is given back: a connection keeps at
            // most what an ordinary burst needs between packets.
            if self.read.is_empty() && self.read.capacity() > KEEP_CAPACITY {
                self.read = BytesMut::new();
            }
            let missing = message::missing(&self.read);
            self.read.reserve(missing.max(READ_CHUNK));
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(msg) = message::split(&mut self.read)? {
                return Ok(msg);
            }
        }
    }

    async fn timed<T>(
        timeout: Duration,
        f: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        match time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(e) => Err(e.into()),
        }
    }
}

// A connection can be cloned. Cloned connections all share the stream; when the last one is
// dropped, so is the stream (closing it). The session flushes its replies before it reads
// again and before it ends, so nothing written is lost by the drop.
//
// Note that in a milter session, a connection is only ever read from or written
// to serially. However, during the eom stage, a clone of the connection is used
// to write replies from the eom callback.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Mutex<Inner>>,
}

impl Connection {
    pub fn new<S>(stream: S, timeout: Duration) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream: Box<dyn Stream> = Box::new(stream);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                stream: BufWriter::with_capacity(WRITE_CAPACITY, stream),
                read: BytesMut::new(),
                timeout,
            })),
        }
    }

    /// Reads the next message. Replies still buffered are written first: the MTA waits for
    /// them before it sends more.
    pub async fn read_message(&self) -> io::Result<Message> {
        let mut inner = self.inner.lock().await;
        let timeout = inner.timeout;
        if !inner.stream.buffer().is_empty() {
            Inner::timed(timeout, inner.stream.flush()).await?;
        }
        let result = match message::split(&mut inner.read) {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Inner::timed(timeout, inner.read_more()).await,
            Err(e) => Err(e),
        };

        if let Ok(msg) = &result {
            trace!(?msg, "message read");
        }

        result
    }

    /// Writes buffered replies to the stream.
    pub async fn flush(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().await;
        let timeout = inner.timeout;
        if inner.stream.buffer().is_empty() {
            return Ok(());
        }
        Inner::timed(timeout, inner.stream.flush()).await
    }

    pub async fn write_reply(&self, reply: Reply) -> io::Result<()> {
        // A progress notice is for now, not for the next batch.
        let now = matches!(reply, Reply::Progress);
        let msg = reply.into_message();

        self.write_message(msg).await?;
        if now {
            self.flush().await?;
        }
        Ok(())
    }

    /// Buffers a message; it is written at the next `flush` or `read_message`.
    pub async fn write_message(&self, msg: Message) -> io::Result<()> {
        trace!(?msg, "writing message");

        let mut inner = self.inner.lock().await;
        let timeout = inner.timeout;
        if inner.stream.buffer().len() + 5 + msg.buffer.len() <= WRITE_CAPACITY {
            // Only copied into the buffer: nothing here can wait.
            return message::write_unflushed(&mut inner.stream, msg).await;
        }
        Inner::timed(timeout, message::write_unflushed(&mut inner.stream, msg)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use tokio::{io::AsyncReadExt, join};

    #[tokio::test]
    async fn multiple_connections() {
        let (mut client, stream) = tokio::io::duplex(100);

        let conn1 = Connection::new(stream, Duration::from_secs(30));
        let conn2 = conn1.clone();

        // First, read from and write to the first connection.

        client.write_all(b"\0\0\0\x03xyz").await.unwrap();

        let msg = conn1.read_message().await.unwrap();
        assert_eq!(msg, Message::new(b'x', "yz"));
        conn1.write_message(msg).await.unwrap();
        conn1.flush().await.unwrap();

        let mut buffer = vec![0; 7];
        client.read_exact(&mut buffer).await.unwrap();
        assert_eq!(buffer, b"\0\0\0\x03xyz");

        // Drop the first connection and continue using the second connection.

        drop(conn1);

        let msg = Message::new(b'x', "abc");
        conn2.write_message(msg).await.unwrap();
        conn2.flush().await.unwrap();

        let mut buffer = vec![0; 8];
        client.read_exact(&mut buffer).await.unwrap();
        assert_eq!(buffer, b"\0\0\0\x04xabc");

        // Drop the second and last remaining connection, closing the stream.

        drop(conn2);

        let e = client.read_u8().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn replies_wait_for_the_next_read() {
        let (mut client, stream) = tokio::io::duplex(100);
        let conn = Connection::new(stream, Duration::from_secs(30));

        conn.write_message(Message::new(b'h', "a")).await.unwrap();
        conn.write_message(Message::new(b'c', "")).await.unwrap();
        client.write_all(b"\0\0\0\x01Q").await.unwrap();
        let msg = conn.read_message().await.unwrap();
        assert_eq!(msg, Message::new(b'Q', ""));

        let mut buffer = vec![0; 11];
        client.read_exact(&mut buffer).await.unwrap();
        assert_eq!(buffer, b"\0\0\0\x02ha\0\0\0\x01c");
    }

    #[tokio::test]
    async fn connection_timeout() {
        let timeout = Duration::from_secs(30);

        let (mut client, stream) = tokio::io::duplex(100);
        let conn = Connection::new(stream, timeout);

        // Both the `Connection` and the client end of the duplex stream are
        // moved into the futures. The connection is therefore dropped and
        // closes after 30 seconds. The client write then fails as it attempts
        // to write a few seconds later.

        time::pause();

        let (stream_result, client_result) = join!(
            async move { conn.read_message().await },
            async move {
                client.write_all(b"\0\0\0\x05").await.unwrap();
                time::sleep(timeout + Duration::from_secs(5)).await;
                client.write_all(b"Xyzabc").await
            },
        );

        time::resume();

        let e = stream_result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);

        let e = client_result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BrokenPipe);
    }
}
