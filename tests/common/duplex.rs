//! An in-memory duplex byte stream: what a socket is to a session, without a socket.
//!
//! [`pair`] makes two connected ends out of two `piper` pipes, one per direction. Each end
//! reads what the other writes and implements futures-io `AsyncRead + AsyncWrite`, so one end
//! can go to `Chat::serve` and the other to a WebSocket client. Closing (or dropping) an end
//! closes its writing direction: the other end then reads end-of-stream, as after a TCP FIN.
//! No reactor is involved, so it works under any executor, or none beyond `block_on`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// One end of an in-memory connection.
pub struct Duplex {
    reader: piper::Reader,
    writer: piper::Writer,
}

/// Two connected ends; each direction buffers up to `capacity` bytes before a writer waits.
pub fn pair(capacity: usize) -> (Duplex, Duplex) {
    let (a_reads, b_writes) = piper::pipe(capacity);
    let (b_reads, a_writes) = piper::pipe(capacity);
    (
        Duplex {
            reader: a_reads,
            writer: a_writes,
        },
        Duplex {
            reader: b_reads,
            writer: b_writes,
        },
    )
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_close(cx)
    }
}
