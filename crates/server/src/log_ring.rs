//! The server's recent log lines, kept in memory for `getLog` (`global`: the last
//! [`GLOBAL_LINES`]; `startupWarnings`: warnings and errors logged before the server began to
//! serve), in mongod's JSON line shape (`t`, `s`, `c`, `msg`, `attr`).
//!
//! Invariants:
//! - Bounded: at most [`GLOBAL_LINES`] and [`STARTUP_LINES`] lines, each cut to
//!   [`MAX_LINE_BYTES`]; older lines are dropped, and `totalLinesWritten` still counts them.
//! - [`RingLayer`] sees the events the process's filter lets through (the same as stderr), and
//!   never logs itself. The ring's mutex is a leaf, held only to push or copy lines.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bson::{Document, doc};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub const GLOBAL_LINES: usize = 1024;
pub const STARTUP_LINES: usize = 100;
pub const MAX_LINE_BYTES: usize = 4096;

struct Ring {
    lines: VecDeque<String>,
    written: u64,
}

impl Ring {
    const fn new() -> Ring {
        Ring {
            lines: VecDeque::new(),
            written: 0,
        }
    }

    fn push(&mut self, line: String, cap: usize) {
        if self.lines.len() == cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        self.written += 1;
    }
}

static GLOBAL: Mutex<Ring> = Mutex::new(Ring::new());
static STARTUP: Mutex<Ring> = Mutex::new(Ring::new());
static SERVING: AtomicBool = AtomicBool::new(false);

/// From now on warnings are no longer startup warnings.
pub fn mark_serving() {
    SERVING.store(true, Ordering::Relaxed);
}

/// `getLog`'s answer for `name`: the lines and how many were ever written; `None` for a log
/// that does not exist.
pub fn lines(name: &str) -> Option<(Vec<String>, u64)> {
    let ring = match name {
        "global" => &GLOBAL,
        "startupWarnings" => &STARTUP,
        _ => return None,
    };
    let ring = ring.lock().unwrap_or_else(|p| p.into_inner());
    Some((ring.lines.iter().cloned().collect(), ring.written))
}

/// The tracing layer that feeds the rings.
pub struct RingLayer;

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let level = *meta.level();
        let severity = match level {
            Level::ERROR => "E",
            Level::WARN => "W",
            Level::INFO => "I",
            _ => "D1",
        };
        let line = doc! {
            "t": { "$date": bson::DateTime::now().try_to_rfc3339_string().unwrap_or_default() },
            "s": severity,
            "c": meta.target(),
            "msg": fields.message,
            "attr": fields.attr,
        };
        let mut line = crate::status::json_of(&line);
        if line.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        if level <= Level::WARN && !SERVING.load(Ordering::Relaxed) {
            let mut startup = STARTUP.lock().unwrap_or_else(|p| p.into_inner());
            startup.push(line.clone(), STARTUP_LINES);
        }
        let mut global = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
        global.push(line, GLOBAL_LINES);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    attr: Document,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            name => {
                self.attr.insert(name, value);
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            name => {
                self.attr.insert(name, format!("{value:?}"));
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attr.insert(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.attr.insert(field.name(), value as i64);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attr.insert(field.name(), value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attr.insert(field.name(), value);
    }
}
