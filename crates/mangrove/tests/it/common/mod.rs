//! Shared helpers for the integration tests: spawn a `mangrove serve` child on
//! a free loopback port with a temporary data directory, and build / read raw
//! wire-protocol messages without using the server's own codec.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bson::{Document, doc};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

/// The binary under test: `MANGROVE_BIN` if set, else the one cargo built.
pub fn mangrove_bin() -> PathBuf {
    match std::env::var_os("MANGROVE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_mangrove")),
    }
}

fn unique_dir(prefix: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    ))
}

/// A running server. Dropping it sends SIGTERM (then SIGKILL) and removes its
/// temporary directory; if the test is panicking, the server's stderr tail is
/// printed to help diagnose.
pub struct Server {
    pub child: Child,
    pub host: String,
    pub port: u16,
    /// The whole `mangrove ready: listening on ...` stdout line.
    pub ready_line: String,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    stopped: bool,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&["--replset", "rs0"])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let bin = mangrove_bin();
        assert!(
            bin.exists(),
            "mangrove binary not found at {}",
            bin.display()
        );
        let dir = unique_dir("mangrove-rstest");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create temp data dir");
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path).expect("create log file");
        let mut child = Command::new(&bin)
            .arg("serve")
            .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
            .arg(&data)
            .args(extra)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<(String, u16, String)>();
        std::thread::spawn(move || {
            // Keep draining stdout for the life of the process.
            let re = regex::Regex::new(r"listening on (\S+):(\d+)").unwrap();
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent
                    && let Some(c) = re.captures(&line)
                    && let Ok(port) = c[2].parse::<u16>()
                {
                    let _ = tx.send((c[1].to_string(), port, line.clone()));
                    sent = true;
                }
            }
        });

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((host, port, ready_line)) => {
                    return Server {
                        child,
                        host,
                        port,
                        ready_line,
                        dir,
                        log_path,
                        stopped: false,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let tail = read_tail(&log_path, 40);
                        let _ = std::fs::remove_dir_all(&dir);
                        panic!("mangrove exited before becoming ready ({status}); stderr:\n{tail}");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = read_tail(&log_path, 40);
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!(
                        "mangrove did not print 'listening on HOST:PORT' in 60s; stderr:\n{tail}"
                    );
                }
            }
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn uri(&self) -> String {
        format!("mongodb://{}/", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, n: usize) -> String {
        read_tail(&self.log_path, n)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect((self.host.as_str(), self.port)).expect("connect to server");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Sends `signal` (e.g. "TERM", "INT") and waits up to 15 s; returns the
    /// exit status, or None if it had to be killed.
    pub fn stop_with(&mut self, signal: &str) -> Option<ExitStatus> {
        self.stopped = true;
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop_with("TERM");
        }
        if std::thread::panicking() {
            eprintln!(
                "---- mangrove pid {} stderr tail ----\n{}",
                self.child.id(),
                self.log_tail(60)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_tail(path: &PathBuf, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(_) => "<no log>".into(),
    }
}

// ---------------------------------------------------------------------------
// Hand-built wire messages (little-endian), independent of the server codec.
// ---------------------------------------------------------------------------

/// A 16-byte header: messageLength, requestID, responseTo, opCode.
pub fn header(message_length: i32, request_id: i32, response_to: i32, op_code: i32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&message_length.to_le_bytes());
    v.extend_from_slice(&request_id.to_le_bytes());
    v.extend_from_slice(&response_to.to_le_bytes());
    v.extend_from_slice(&op_code.to_le_bytes());
    v
}

/// A full message: header with the correct length around `body`.
pub fn frame(request_id: i32, op_code: i32, body: &[u8]) -> Vec<u8> {
    let mut v = header((16 + body.len()) as i32, request_id, 0, op_code);
    v.extend_from_slice(body);
    v
}

pub fn bson_bytes(doc: &Document) -> Vec<u8> {
    let mut out = Vec::new();
    doc.to_writer(&mut out).expect("serialize bson");
    out
}

/// OP_MSG body: flagBits, then one kind-0 section holding `raw_doc` verbatim.
pub fn op_msg_body_raw(flags: u32, raw_doc: &[u8]) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(raw_doc);
    body
}

pub fn op_msg(request_id: i32, doc: &Document) -> Vec<u8> {
    frame(request_id, OP_MSG, &op_msg_body_raw(0, &bson_bytes(doc)))
}

pub fn ping_msg(request_id: i32) -> Vec<u8> {
    op_msg(request_id, &doc! { "ping": 1, "$db": "admin" })
}

/// OP_QUERY: flags, fullCollectionName cstring, numberToSkip, numberToReturn, query.
pub fn op_query(request_id: i32, full_collection: &str, query: &Document) -> Vec<u8> {
    let mut body = 0i32.to_le_bytes().to_vec();
    body.extend_from_slice(full_collection.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(&(-1i32).to_le_bytes());
    body.extend_from_slice(&bson_bytes(query));
    frame(request_id, OP_QUERY, &body)
}

/// One reply read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum ReadOutcome {
    Reply(Reply),
    /// The server closed the connection (EOF or reset) before a full message.
    Closed {
        bytes_before_close: usize,
    },
    /// Nothing within the read timeout.
    TimedOut {
        bytes: usize,
    },
}

/// Reads one message, or reports that the connection was closed / timed out.
pub fn read_message(s: &mut TcpStream) -> ReadOutcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if buf.len() >= 16 {
            let len = i32::from_le_bytes(buf[0..4].try_into().unwrap());
            if len >= 16 && buf.len() >= len as usize {
                let len = len as usize;
                return ReadOutcome::Reply(Reply {
                    request_id: i32::from_le_bytes(buf[4..8].try_into().unwrap()),
                    response_to: i32::from_le_bytes(buf[8..12].try_into().unwrap()),
                    op_code: i32::from_le_bytes(buf[12..16].try_into().unwrap()),
                    body: buf[16..len].to_vec(),
                });
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return ReadOutcome::Closed {
                    bytes_before_close: buf.len(),
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return ReadOutcome::TimedOut { bytes: buf.len() };
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                return ReadOutcome::Closed {
                    bytes_before_close: buf.len(),
                };
            }
        }
    }
}

/// Decodes the document of an OP_MSG (kind-0 section) or OP_REPLY reply.
pub fn reply_doc(r: &Reply) -> Result<Document, String> {
    match r.op_code {
        OP_MSG => {
            if r.body.len() < 5 {
                return Err(format!(
                    "OP_MSG reply body too short: {} bytes",
                    r.body.len()
                ));
            }
            let flags = u32::from_le_bytes(r.body[0..4].try_into().unwrap());
            if flags & 1 != 0 {
                return Err("reply has checksumPresent set; not expected".into());
            }
            if r.body[4] != 0 {
                return Err(format!("reply section kind {} (expected 0)", r.body[4]));
            }
            Document::from_reader(&mut &r.body[5..]).map_err(|e| format!("reply BSON: {e}"))
        }
        OP_REPLY => {
            // responseFlags i32, cursorID i64, startingFrom i32, numberReturned i32, docs
            if r.body.len() < 20 {
                return Err("OP_REPLY body too short".into());
            }
            Document::from_reader(&mut &r.body[20..]).map_err(|e| format!("reply BSON: {e}"))
        }
        other => Err(format!("unexpected reply opcode {other}")),
    }
}

/// Sends `msg` and reads exactly one reply document (panics otherwise).
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) -> (Reply, Document) {
    s.write_all(msg).expect("write request");
    match read_message(s) {
        ReadOutcome::Reply(r) => {
            let d = reply_doc(&r).unwrap_or_else(|e| panic!("{e}"));
            (r, d)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// `ok` as a number, whatever numeric BSON type the server used.
pub fn ok_value(d: &Document) -> Option<f64> {
    match d.get("ok")? {
        bson::Bson::Double(v) => Some(*v),
        bson::Bson::Int32(v) => Some(*v as f64),
        bson::Bson::Int64(v) => Some(*v as f64),
        bson::Bson::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

pub fn int_value(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        bson::Bson::Double(v) => Some(*v as i64),
        bson::Bson::Int32(v) => Some(*v as i64),
        bson::Bson::Int64(v) => Some(*v),
        _ => None,
    }
}

/// A fresh connection's `ping` must answer ok:1.
pub fn assert_healthy(server: &Server) {
    let mut s = server.connect();
    let (r, d) = round_trip(&mut s, &ping_msg(9_999));
    assert_eq!(r.op_code, OP_MSG, "ping reply opcode");
    assert_eq!(r.response_to, 9_999, "ping reply responseTo");
    assert_eq!(ok_value(&d), Some(1.0), "ping reply: {d}");
}

/// Starts `mangrove serve` on an existing data directory (tests that restart a server on the
/// same data), optionally under a file-size limit in KiB with SIGXFSZ ignored, so a write past
/// it fails with EFBIG as on a full disk. The limit is a soft one, so the test can lift it from
/// outside (`prlimit`), as an operator frees space. The server's log goes to
/// [`server_log_path`]. Returns the child and its port.
pub fn spawn_on_data_dir(data: &std::path::Path, file_limit_kib: Option<u64>) -> (Child, u16) {
    spawn_on_data_dir_with(data, file_limit_kib, &[])
}

/// [`spawn_on_data_dir`] with more `serve` arguments.
pub fn spawn_on_data_dir_with(
    data: &std::path::Path,
    file_limit_kib: Option<u64>,
    extra: &[&str],
) -> (Child, u16) {
    let mut command = match file_limit_kib {
        Some(kib) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "trap '' XFSZ; ulimit -S -f {kib}; exec \"$0\" \"$@\""
                ))
                .arg(mangrove_bin());
            c
        }
        None => Command::new(mangrove_bin()),
    };
    if let Some(parent) = data.parent() {
        std::fs::create_dir_all(parent).expect("create the data directory's parent");
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server_log_path(data))
        .expect("open the server log file");
    let mut child = command
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn mangrove");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the ready line");
    let port = line
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    (child, port)
}

/// Starts `mangrove serve` on a data directory where it is expected to refuse to start;
/// returns its exit status and what it printed on stderr. Panics if it starts.
pub fn start_refused(data: &std::path::Path, extra: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(mangrove_bin())
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mangrove");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for mangrove").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started (or hung) instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("mangrove ready"),
        "the server started: {stdout}"
    );
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a `mangrove` tool (`verify`, `log verify`, ...); returns exit code and stdout.
pub fn run_tool(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(mangrove_bin())
        .args(args)
        .output()
        .expect("run mangrove");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Where [`spawn_on_data_dir`] writes the server's log: next to the data directory.
pub fn server_log_path(data: &std::path::Path) -> PathBuf {
    data.with_extension("server.log")
}

/// A Rust-driver client for a test server: no driver-side write retries (each outcome must be
/// the server's own), and a short server-selection timeout so that operations against a killed
/// server give up quickly.
pub async fn driver_client(port: u16) -> mongodb::Client {
    let mut options =
        mongodb::options::ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/"))
            .await
            .expect("parse the URI");
    options.server_selection_timeout = Some(Duration::from_secs(1));
    options.connect_timeout = Some(Duration::from_secs(1));
    options.retry_writes = Some(false);
    mongodb::Client::with_options(options).expect("client options")
}

/// Every document of a collection.
pub async fn all_docs(coll: &mongodb::Collection<Document>) -> Vec<Document> {
    use futures_util::TryStreamExt;
    coll.find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read the cursor")
}
