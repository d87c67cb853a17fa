//! A change stream read with bare `getMore`s on a connection of its own: each reply's events are
//! counted, never decoded. It stands for a consumer that forwards events as they come (a CDC
//! connector), and it separates what the server pays for a stream from what a driver pays to
//! decode every event, which on a two-core machine shares the cores with the server.
//!
//! Only for a server without authentication or TLS, at a plain `mongodb://host:port/` address.

use bson::{RawDocument, doc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// OP_MSG, the only opcode used.
const OP_MSG: i32 = 2013;
/// The largest reply accepted: a batch's 16 MiB and room for its envelope.
const MAX_REPLY_BYTES: usize = 48 * 1024 * 1024;

pub struct RawWatcher {
    conn: TcpStream,
    db: String,
    cursor: i64,
    next_request: i32,
    /// Reused for every reply.
    reply: Vec<u8>,
}

/// `host:port` of a `mongodb://host:port/...` URI without credentials or options that need a
/// driver (one host, no TLS).
pub fn plain_address(uri: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| format!("raw watchers need a mongodb:// URI, not {uri:?}"))?;
    let (host, options) = rest.split_once('/').unwrap_or((rest, ""));
    if host.contains('@') || host.contains(',') || options.contains("tls") {
        return Err(format!(
            "raw watchers need one host without credentials or TLS, not {uri:?}"
        ));
    }
    Ok(host.to_string())
}

impl RawWatcher {
    /// Opens `db.watch()` (an `aggregate: 1` with `$changeStream`) at `address`.
    pub async fn open(address: &str, db: &str) -> Result<RawWatcher, String> {
        let conn = TcpStream::connect(address)
            .await
            .map_err(|e| format!("raw watcher: connect to {address}: {e}"))?;
        conn.set_nodelay(true)
            .map_err(|e| format!("raw watcher: TCP_NODELAY: {e}"))?;
        let mut w = RawWatcher {
            conn,
            db: db.to_string(),
            cursor: 0,
            next_request: 1,
            reply: Vec::new(),
        };
        let open = doc! {
            "aggregate": 1,
            "pipeline": [{"$changeStream": {}}],
            "cursor": {},
            "$db": db,
        };
        w.command(&open).await?;
        let cursor = w.reply_cursor()?;
        w.cursor = cursor
            .get_i64("id")
            .map_err(|e| format!("raw watcher: the aggregate's reply has no cursor id: {e}"))?;
        Ok(w)
    }

    /// Waits for the next batch (the server's default await time) and returns how many events
    /// it had.
    pub async fn next_batch(&mut self) -> Result<u64, String> {
        let more = doc! {
            "getMore": self.cursor,
            "collection": "$cmd.aggregate",
            "$db": self.db.as_str(),
        };
        self.command(&more).await?;
        let batch = self
            .reply_cursor()?
            .get_array("nextBatch")
            .map_err(|e| format!("raw watcher: a getMore reply has no nextBatch: {e}"))?;
        Ok(batch.into_iter().count() as u64)
    }

    /// Kills the stream's cursor, as a driver does when a stream is dropped.
    pub async fn close(mut self) -> Result<(), String> {
        let kill = doc! {
            "killCursors": "$cmd.aggregate",
            "cursors": [self.cursor],
            "$db": self.db.as_str(),
        };
        self.command(&kill).await
    }

    /// Sends `command` and reads its reply into `self.reply`; a reply without `ok: 1` is an
    /// error.
    async fn command(&mut self, command: &bson::Document) -> Result<(), String> {
        let body = bson::RawDocumentBuf::try_from(command)
            .map_err(|e| format!("raw watcher: encode: {e}"))?
            .into_bytes();
        let len = 16 + 4 + 1 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as i32).to_le_bytes());
        msg.extend_from_slice(&self.next_request.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&OP_MSG.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        msg.extend_from_slice(&body);
        self.next_request = self.next_request.wrapping_add(1);
        self.conn
            .write_all(&msg)
            .await
            .map_err(|e| format!("raw watcher: send: {e}"))?;
        self.read_reply().await?;
        let reply = self.reply_doc()?;
        if reply.get_f64("ok").ok() != Some(1.0) && reply.get_i32("ok").ok() != Some(1) {
            let shown =
                bson::Document::try_from(reply).map_or_else(|e| e.to_string(), |d| d.to_string());
            return Err(format!("raw watcher: the server answered {shown}"));
        }
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<(), String> {
        let mut header = [0u8; 16];
        self.conn
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("raw watcher: receive: {e}"))?;
        let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let op = i32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let len = usize::try_from(len).unwrap_or(0);
        if op != OP_MSG || !(16 + 5..=MAX_REPLY_BYTES).contains(&len) {
            return Err(format!(
                "raw watcher: a reply of opcode {op} and {len} bytes is not an OP_MSG this reads"
            ));
        }
        self.reply.resize(len - 16, 0);
        self.conn
            .read_exact(&mut self.reply)
            .await
            .map_err(|e| format!("raw watcher: receive: {e}"))?;
        Ok(())
    }

    /// The reply's body (after the flags and the section kind, which must be 0).
    fn reply_doc(&self) -> Result<&RawDocument, String> {
        match self.reply.get(4..) {
            Some([0, body @ ..]) => RawDocument::from_bytes(body)
                .map_err(|e| format!("raw watcher: a reply is not BSON: {e}")),
            _ => Err("raw watcher: a reply without a body section".into()),
        }
    }

    fn reply_cursor(&self) -> Result<&RawDocument, String> {
        self.reply_doc()?
            .get_document("cursor")
            .map_err(|e| format!("raw watcher: a reply has no cursor: {e}"))
    }
}
