//! Admission: how much of the server one connection may hold, and for how long.
//!
//! Invariants:
//! - A frame's bytes are budgeted as they arrive, never by the length its header declares: a
//!   client that declares 48 MB and stalls holds only the bytes it actually sent.
//! - Each connection may hold `connection_inflight_bytes` of its frame without touching the
//!   shared budget, so ordinary requests never wait behind other connections' frames. Only
//!   bytes beyond that draw on the shared `max_inflight_bytes`. Request bytes in memory are
//!   thus at most `max_connections × (connection_inflight_bytes + READ_BUFFER) +
//!   max_inflight_bytes`.
//! - Every wait on a client has a deadline: the first message (handshake timeout), the rest of
//!   a message once its first byte arrived and the write of its reply (message timeout), and
//!   the pause between messages when an idle timeout is configured.
//! - Time spent waiting for the shared budget counts against the message timeout, so frames
//!   that exhaust the budget between them while half sent cannot wait on each other forever.
//! - Deadlines cost nothing while data is already there: one `timeout` wraps a whole frame,
//!   and a timer is only registered if the read has to wait.

use std::time::Duration;

use mangrove_wire::{self as wire, HEADER_LEN, Header};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::SemaphorePermit;

use crate::Shared;

/// Capacity of each connection's read buffer: one `read` call fills up to this much.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// Why the server closed a connection.
#[derive(Debug)]
pub(crate) enum Close {
    /// A client was too slow or silent; `phase` says at what, `flag` what to raise.
    Timeout {
        phase: &'static str,
        limit: Duration,
        flag: &'static str,
    },
    /// Anything else: garbage on the wire, a broken socket, a fail point.
    Error(String),
}

impl From<String> for Close {
    fn from(reason: String) -> Close {
        Close::Error(reason)
    }
}

/// One request frame with the shared budget its bytes beyond the connection's own took.
pub(crate) struct Frame<'a> {
    pub header: Header,
    pub bytes: Vec<u8>,
    _budget: Option<SemaphorePermit<'a>>,
}

/// The shared budget counts KiB, so that a u32 permit count covers any configured budget.
pub(crate) fn budget_units(bytes: usize) -> u32 {
    (bytes / 1024 + 1).min(u32::MAX as usize) as u32
}

/// Reads the next frame: None when the client closed the connection between messages.
/// `first` selects the handshake timeout for the wait before the first byte.
pub(crate) async fn read_frame<'a>(
    shared: &'a Shared,
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    first: bool,
) -> Result<Option<Frame<'a>>, Close> {
    let config = &shared.config;
    let (limit, phase, flag) = if first {
        let phase = "without a first message";
        (
            Some(config.handshake_timeout),
            phase,
            "--handshake-timeout-secs",
        )
    } else {
        let phase = "idle between messages";
        (config.idle_timeout, phase, "--idle-timeout-secs")
    };
    let arrived = match limit {
        Some(limit) => tokio::time::timeout(limit, reader.fill_buf())
            .await
            .map_err(|_| Close::Timeout { phase, limit, flag })?,
        None => reader.fill_buf().await,
    };
    if arrived.map_err(|e| format!("read failed: {e}"))?.is_empty() {
        return Ok(None);
    }
    let limit = config.message_timeout;
    match tokio::time::timeout(limit, read_started_frame(shared, reader)).await {
        Ok(frame) => frame.map(Some),
        Err(_) => Err(Close::Timeout {
            phase: "with a message started but not finished",
            limit,
            flag: "--message-timeout-secs",
        }),
    }
}

/// The header and body of a frame whose first byte has arrived.
async fn read_started_frame<'a>(
    shared: &'a Shared,
    reader: &mut BufReader<impl AsyncRead + Unpin>,
) -> Result<Frame<'a>, Close> {
    let mut header_bytes = [0u8; HEADER_LEN];
    if let Err(e) = reader.read_exact(&mut header_bytes).await {
        return Err(Close::Error(format!(
            "truncated message header: stream ended or failed before {HEADER_LEN} bytes ({e})"
        )));
    }
    let header = Header::parse(&header_bytes);
    let len = wire::frame_length(&header, &shared.limits).map_err(|e| e.to_string())?;
    let mut charge = Charge {
        own: shared.config.connection_inflight_bytes,
        held: 0,
        budget: None,
    };
    let mut bytes = Vec::with_capacity(len.min(charge.own.max(HEADER_LEN)));
    bytes.extend_from_slice(&header_bytes);
    let truncated = |got: usize| {
        Close::Error(format!(
            "truncated message: header declared {len} bytes, stream ended after {got}"
        ))
    };
    while bytes.len() < len {
        if reader.buffer().is_empty() && len - bytes.len() >= READ_BUFFER {
            // A large remainder goes straight into the frame, a buffer's worth per read, which
            // saves copying it through the read buffer; the bound per connection is the same.
            grow(&mut bytes, READ_BUFFER, len);
            let got = (&mut *reader.get_mut())
                .take(READ_BUFFER as u64)
                .read_buf(&mut bytes)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            if got == 0 {
                return Err(truncated(bytes.len()));
            }
            charge.up_to(shared, bytes.len()).await?;
            continue;
        }
        let available = reader
            .fill_buf()
            .await
            .map_err(|e| format!("read failed: {e}"))?
            .len();
        if available == 0 {
            return Err(truncated(bytes.len()));
        }
        let take = available.min(len - bytes.len());
        charge.up_to(shared, bytes.len() + take).await?;
        grow(&mut bytes, take, len);
        // Still buffered: this second fill_buf does no I/O.
        bytes.extend_from_slice(&reader.buffer()[..take]);
        reader.consume(take);
    }
    Ok(Frame {
        header,
        bytes,
        _budget: charge.budget,
    })
}

/// The shared budget one frame has taken so far.
struct Charge<'a> {
    /// Bytes the connection may hold without the shared budget.
    own: usize,
    /// Units held in `budget`.
    held: u32,
    budget: Option<SemaphorePermit<'a>>,
}

impl<'a> Charge<'a> {
    /// Makes the budget cover a frame of `end` bytes.
    async fn up_to(&mut self, shared: &'a Shared, end: usize) -> Result<(), Close> {
        if end <= self.own {
            return Ok(());
        }
        let need = budget_units(end - self.own);
        if need > self.held {
            take_budget(shared, &mut self.budget, need - self.held).await?;
            self.held = need;
        }
        Ok(())
    }
}

/// Waits for `units` more of the shared budget, adding them to `held`.
async fn take_budget<'a>(
    shared: &'a Shared,
    held: &mut Option<SemaphorePermit<'a>>,
    units: u32,
) -> Result<(), Close> {
    let permit = shared
        .inflight
        .acquire_many(units)
        .await
        .map_err(|_| Close::Error("server is shutting down".into()))?;
    match held {
        Some(p) => p.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Makes room for `take` more bytes, doubling at most and never past the frame's length, so
/// the allocation follows the bytes that arrived rather than the length declared.
fn grow(bytes: &mut Vec<u8>, take: usize, len: usize) {
    let needed = bytes.len() + take;
    if needed <= bytes.capacity() {
        return;
    }
    let target = (bytes.capacity() * 2).max(needed).min(len);
    bytes.reserve_exact(target - bytes.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_never_passes_the_declared_length() {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&[0; 16]);
        grow(&mut bytes, 4, 20);
        assert_eq!(bytes.capacity(), 20);
        let mut small = Vec::with_capacity(4);
        grow(&mut small, 4, 4);
        assert_eq!(small.capacity(), 4);
    }

    #[test]
    fn budget_units_round_up_and_saturate() {
        assert_eq!(budget_units(0), 1);
        assert_eq!(budget_units(1024), 2);
        assert_eq!(budget_units(usize::MAX), u32::MAX);
    }
}
