//! Server-side JavaScript (`mangrove-js`): `$where`, `$function`, `$accumulator` and
//! `mapReduce` run their functions here, in QuickJS (through `rquickjs`), one runtime per
//! thread, each call bounded in memory and time.
//!
//! Why a crate of its own, that the query crate calls directly (rather than a trait object
//! the server installs): the query crate must stay pure, and everything impure about running
//! JavaScript is the interpreter itself, with its C code, its allocator limit and its interrupt
//! clock. Keeping it here keeps that out of the query crate's source; what the query crate
//! hands in is only source text and BSON. The clock the interrupt handler reads is compared
//! with a deadline the server hands in ([`with_deadline`], a thread-local set around the
//! command's synchronous work, like `with_collation`), and whether JavaScript may run at all
//! is process-wide configuration the server sets once at start ([`configure`]). A trait
//! object would have bought nothing but indirection: there is one engine.
//!
//! Invariant: this crate knows BSON values and JavaScript, nothing else: no filter,
//! expression, pipeline, command, collection or storage. It never reads documents; callers pass
//! them in.
//!
//! Conversions (`convert.rs`), where they differ from mongod's shell types:
//! - JS numbers come back as doubles (as mongod); BSON int64 and decimal are `NumberLong` and
//!   `NumberDecimal` objects, whose arithmetic goes through doubles (`valueOf`).
//! - Documents become plain objects; JS orders integer-like keys first, so a document with
//!   such keys comes back reordered.
//! - `undefined` becomes null; functions become Code; DBPointer and CodeWithScope values are
//!   refused (JSInterpreterFailure) rather than approximated.

mod convert;
mod engine;
mod error;

pub use error::js_failure;

use std::cell::Cell;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bson::{Bson, Document, RawDocument};
pub use mangrove_bson::CodedError;
use rquickjs::Value;

use convert::Types;

/// Process-wide settings: whether JavaScript may run, and each call's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// mongod's `security.javascriptEnabled`.
    pub enabled: bool,
    /// The bound of one call without a (nearer) `maxTimeMS` deadline.
    pub time: Duration,
    /// The heap of one thread's runtime.
    pub memory_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            time: Duration::from_secs(60),
            memory_bytes: 256 << 20,
        }
    }
}

static SETTINGS: RwLock<Option<Settings>> = RwLock::new(None);

/// Sets the process's settings; a runtime already started keeps its memory limit.
pub fn configure(settings: Settings) {
    *SETTINGS.write().unwrap_or_else(|e| e.into_inner()) = Some(settings);
}

pub(crate) fn limits() -> Settings {
    SETTINGS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_default()
}

/// Whether server-side JavaScript is enabled (`--javascript-enabled`).
pub fn enabled() -> bool {
    limits().enabled
}

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with the command's `maxTimeMS` deadline: a JavaScript call inside it that runs past
/// it is interrupted and fails with MaxTimeMSExpired (50).
pub fn with_deadline<T>(deadline: Option<Instant>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(deadline)));
    f()
}

pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

/// The server's test of whether the running operation was killed (`killOp`).
static KILLED: std::sync::OnceLock<fn() -> bool> = std::sync::OnceLock::new();

/// Sets, once per process, how a call learns that its operation was killed: a call running
/// when `killed` turns true is interrupted and fails with Interrupted (11601). (A function,
/// not a flag handed in: the server keeps its flag in a task-local this crate cannot name.)
pub fn set_kill_check(killed: fn() -> bool) {
    let _ = KILLED.set(killed);
}

pub(crate) fn killed() -> bool {
    KILLED.get().is_some_and(|f| f())
}

/// A `$where` string as a function of `obj` (mongod's second name for the document): code
/// that is not already a function becomes the body of one, with `return` added to a lone
/// expression (mongod's rule: one line, no `return`, at most a trailing `;`); a function is
/// nested inside, so its body sees `obj` too.
pub fn where_function(code: &str) -> String {
    let trimmed = code.trim();
    if is_function(trimmed) {
        return format!("function(obj) {{ return ({trimmed}\n).call(this); }}");
    }
    let semi = trimmed.find(';');
    let lone = !trimmed.contains('\n')
        && !has_return(trimmed)
        && semi.is_none_or(|i| i == trimmed.len() - 1);
    if lone {
        format!("function(obj) {{ return {trimmed} }}")
    } else {
        format!("function(obj) {{ {trimmed}\n}}")
    }
}

/// [`where_function`] compiled: a lone statement that `return` cannot precede (`while (x) {}`)
/// becomes the function's body instead, rather than the syntax error mongod's rule makes of it.
pub fn where_source(code: &str) -> Result<String, CodedError> {
    let source = where_function(code);
    match check(&source, None) {
        Ok(()) => Ok(source),
        Err(e)
            if source.starts_with("function(obj) { return ")
                && !code.trim().starts_with("function") =>
        {
            let body = format!("function(obj) {{ {}\n}}", code.trim());
            check(&body, None).map(|()| body).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// Code that is a function expression (`function (…) {…}`, `function name(…)`), not an
/// expression that merely starts with the letters (`functional == 1`).
fn is_function(code: &str) -> bool {
    code.strip_prefix("function")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c == '(' || c.is_whitespace())
}

fn has_return(code: &str) -> bool {
    code.match_indices("return").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + 6..].chars().next();
        before.is_none_or(|c| !c.is_alphanumeric() && c != '_')
            && after.is_none_or(|c| !c.is_alphanumeric() && c != '_')
    })
}

/// Compiles `source` (a function expression), so a syntax error is reported when the command
/// is parsed, as mongod does.
pub fn check(source: &str, scope: Option<&Document>) -> Result<(), CodedError> {
    engine::with_ctx(|ctx, cache| engine::function(ctx, cache, source, scope).map(drop))
}

/// Calls the function `source` with `this` (a document) and `args`; its result as BSON.
pub fn call(
    source: &str,
    scope: Option<&Document>,
    this: Option<&RawDocument>,
    args: &[Bson],
) -> Result<Bson, CodedError> {
    engine::with_ctx(|ctx, cache| {
        let f = engine::function(ctx, cache, source, scope)?;
        let types = Types::new(ctx).map_err(|e| error::describe(ctx, e))?;
        let this = this.map(|d| types.doc_from_raw(d)).transpose()?;
        let args = args
            .iter()
            .map(|a| types.value(a, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let out = engine::call(ctx, &f, this, args)?;
        types.to_bson(&out, 0)
    })
}

/// `$where`: the function called with the document as `this` and as `obj`, its result's
/// JavaScript truthiness.
pub fn where_matches(source: &str, doc: &RawDocument) -> Result<bool, CodedError> {
    engine::with_ctx(|ctx, cache| {
        let f = engine::function(ctx, cache, source, None)?;
        let types = Types::new(ctx).map_err(|e| error::describe(ctx, e))?;
        let this = types.doc_from_raw(doc)?;
        let obj = this.clone();
        let out = engine::call(ctx, &f, Some(this), vec![obj])?;
        Ok(truthy(&out))
    })
}

/// A map function over one document: the `(key, value)` pairs it emitted, in order.
pub fn map(
    source: &str,
    scope: Option<&Document>,
    doc: &RawDocument,
) -> Result<Vec<(Bson, Bson)>, CodedError> {
    engine::EMITS.with(|e| e.borrow_mut().clear());
    engine::EMIT_BYTES.with(|b| b.set(0));
    engine::EMIT_OVERFLOW.with(|o| o.set(false));
    let ran = engine::with_ctx(|ctx, cache| {
        let f = engine::function(ctx, cache, source, scope)?;
        let types = Types::new(ctx).map_err(|e| error::describe(ctx, e))?;
        let this = types.doc_from_raw(doc)?;
        engine::call(ctx, &f, Some(this), Vec::new()).map(drop)
    });
    let emitted = engine::EMITS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    if engine::EMIT_OVERFLOW.with(std::cell::Cell::get) {
        return Err(CodedError::location(
            31292,
            format!(
                "Size of emitted values exceeds the set size limit of {} bytes",
                engine::MAX_EMIT_BYTES
            ),
        ));
    }
    ran.map(|()| emitted)
}

fn truthy(v: &Value<'_>) -> bool {
    if let Some(b) = v.as_bool() {
        b
    } else if let Some(n) = v.as_number() {
        n != 0.0 && !n.is_nan()
    } else if let Some(s) = v.as_string() {
        s.to_string().is_ok_and(|s| !s.is_empty())
    } else {
        !(v.is_null() || v.is_undefined())
    }
}
