//! The QuickJS runtime of one thread: created on the thread's first JavaScript call, with the
//! memory limit and the interrupt handler, and a cache of compiled functions keyed by their
//! source (and scope). Calls run synchronously on the calling thread, so the deadline the
//! server hands in ([`crate::with_deadline`]) is a thread-local the interrupt handler reads.
//!
//! Operations do not leak into each other through globals: after the prelude the global object
//! is frozen, so an assignment to an undeclared name is lost (an error in strict code), and a
//! mapReduce `scope` reaches its functions as parameters of a wrapper, not as globals.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

use bson::Bson;
use mangrove_bson::CodedError;
use rquickjs::function::Args;
use rquickjs::{Context, Ctx, Function, Persistent, Runtime, Value};

use crate::convert::Types;
use crate::error::{describe, js_failure};
use crate::limits;

/// Compiled functions kept per thread; past this the cache starts again.
const CACHE_ENTRIES: usize = 256;

/// QuickJS's own stack bound for recursion: well inside a tokio worker's 2 MiB stack.
const MAX_STACK: usize = 512 * 1024;

struct Engine {
    // Field order is drop order: cached functions go before the context and runtime they live in.
    cache: HashMap<String, Persistent<Function<'static>>>,
    ctx: Context,
    rt: Runtime,
}

/// Why the running call must stop, checked by the interrupt handler.
#[derive(Clone, Copy)]
struct Stop {
    at: Instant,
    max_time: bool,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    static STOP: Cell<Option<Stop>> = const { Cell::new(None) };
    static INTERRUPTED: Cell<bool> = const { Cell::new(false) };
    /// The interruption was the operation's kill (`killOp`), not its time bound.
    static KILLED: Cell<bool> = const { Cell::new(false) };
    pub(crate) static EMITS: RefCell<Vec<(Bson, Bson)>> = const { RefCell::new(Vec::new()) };
    pub(crate) static EMIT_BYTES: Cell<usize> = const { Cell::new(0) };
    pub(crate) static EMIT_OVERFLOW: Cell<bool> = const { Cell::new(false) };
}

fn new_engine() -> Result<Engine, CodedError> {
    let rt = Runtime::new().map_err(|e| js_failure(format!("cannot start JavaScript: {e}")))?;
    rt.set_memory_limit(limits().memory_bytes);
    rt.set_max_stack_size(MAX_STACK);
    rt.set_interrupt_handler(Some(Box::new(|| {
        let killed = crate::killed();
        if killed {
            KILLED.with(|k| k.set(true));
        }
        let stop = killed || STOP.with(Cell::get).is_some_and(|s| Instant::now() >= s.at);
        if stop {
            INTERRUPTED.with(|i| i.set(true));
        }
        stop
    })));
    let ctx =
        Context::full(&rt).map_err(|e| js_failure(format!("cannot start JavaScript: {e}")))?;
    ctx.with(|ctx| -> Result<(), CodedError> {
        ctx.eval::<(), _>(include_str!("prelude.js"))
            .map_err(|e| describe(&ctx, e))?;
        let emit = Function::new(ctx.clone(), emit).map_err(|e| describe(&ctx, e))?;
        ctx.globals()
            .set("emit", emit)
            .map_err(|e| describe(&ctx, e))?;
        let sleep = Function::new(ctx.clone(), sleep).map_err(|e| describe(&ctx, e))?;
        ctx.globals()
            .set("sleep", sleep)
            .map_err(|e| describe(&ctx, e))?;
        ctx.eval::<(), _>("Object.freeze(globalThis);")
            .map_err(|e| describe(&ctx, e))
    })?;
    Ok(Engine {
        cache: HashMap::new(),
        ctx,
        rt,
    })
}

/// What one map call may emit, in bytes (mongod's `internalQueryMaxJsEmitBytes`, 100 MiB): the
/// pairs live outside the JS heap, so its limit does not bound them.
pub(crate) const MAX_EMIT_BYTES: usize = 100 << 20;

/// `emit(key, value)` of a map function: collected for [`crate::map`] to take.
fn emit<'js>(ctx: Ctx<'js>, key: Value<'js>, value: Value<'js>) -> rquickjs::Result<()> {
    let types = Types::new(&ctx)?;
    let pair = types
        .to_bson(&key, 0)
        .and_then(|k| Ok((k, types.to_bson(&value, 0)?)));
    let (k, v) = match pair {
        Ok(pair) => pair,
        Err(e) => return Err(rquickjs::Exception::throw_message(&ctx, &e.message)),
    };
    let bytes = approx_size(&k) + approx_size(&v);
    let total = EMIT_BYTES.with(|b| {
        b.set(b.get().saturating_add(bytes));
        b.get()
    });
    if total > MAX_EMIT_BYTES {
        EMIT_OVERFLOW.with(|o| o.set(true));
        return Err(rquickjs::Exception::throw_internal(
            &ctx,
            "emitted too much",
        ));
    }
    EMITS.with(|e| e.borrow_mut().push((k, v)));
    Ok(())
}

/// The shell's `sleep(ms)` (drivers' tests slow a query with it): sleeps at most until the
/// call's time bound; cut short there, the call fails as an interrupted one does.
fn sleep(ctx: Ctx<'_>, ms: f64) -> rquickjs::Result<()> {
    let Some(stop) = STOP.with(Cell::get) else {
        return Ok(());
    };
    let wanted = std::time::Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 86_400.0));
    let wake = Instant::now() + wanted;
    let until = wake.min(stop.at);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if crate::killed() {
            KILLED.with(|k| k.set(true));
            INTERRUPTED.with(|i| i.set(true));
            return Err(rquickjs::Exception::throw_internal(&ctx, "interrupted"));
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(10)));
    }
    if wake > stop.at {
        INTERRUPTED.with(|i| i.set(true));
        return Err(rquickjs::Exception::throw_internal(&ctx, "interrupted"));
    }
    Ok(())
}

/// A value's size, roughly as BSON holds it.
fn approx_size(v: &Bson) -> usize {
    match v {
        Bson::String(s) | Bson::JavaScriptCode(s) | Bson::Symbol(s) => s.len() + 8,
        Bson::Array(items) => items.iter().map(|i| approx_size(i) + 8).sum::<usize>() + 8,
        Bson::Document(d) => {
            d.iter()
                .map(|(k, v)| k.len() + approx_size(v))
                .sum::<usize>()
                + 8
        }
        Bson::Binary(b) => b.bytes.len() + 8,
        _ => 16,
    }
}

/// Runs `f` in this thread's context, with the running call's time bound set. A call made
/// from inside JavaScript (never happens: JS reaches Rust only through `emit`) is refused.
pub(crate) fn with_ctx<T>(
    f: impl for<'js> FnOnce(
        &Ctx<'js>,
        &mut HashMap<String, Persistent<Function<'static>>>,
    ) -> Result<T, CodedError>,
) -> Result<T, CodedError> {
    ENGINE.with(|cell| {
        let mut guard = cell
            .try_borrow_mut()
            .map_err(|_| js_failure("JavaScript called re-entrantly"))?;
        if guard.is_none() {
            *guard = Some(new_engine()?);
        }
        let Some(engine) = guard.as_mut() else {
            return Err(js_failure("cannot start JavaScript"));
        };
        let stop = call_stop();
        STOP.with(|s| s.set(Some(stop)));
        INTERRUPTED.with(|i| i.set(false));
        KILLED.with(|k| k.set(false));
        let cache = &mut engine.cache;
        let out = engine.ctx.with(|ctx| f(&ctx, cache));
        STOP.with(|s| s.set(None));
        // The kill is read again, not only the flag the interrupt set: an error of a call
        // whose operation was killed meanwhile is that kill, whatever JavaScript threw.
        if KILLED.with(Cell::get) || (out.is_err() && crate::killed()) {
            return Err(CodedError::new(
                11601,
                "Interrupted",
                "operation was interrupted",
            ));
        }
        if INTERRUPTED.with(Cell::get) {
            return Err(timeout_error(stop));
        }
        if out.is_err() {
            engine.rt.run_gc();
        }
        out
    })
}

/// The earlier of the operation's `maxTimeMS` deadline and the per-call default bound.
fn call_stop() -> Stop {
    let own = Instant::now() + limits().time;
    match crate::deadline() {
        Some(d) if d <= own => Stop {
            at: d,
            max_time: true,
        },
        _ => Stop {
            at: own,
            max_time: false,
        },
    }
}

fn timeout_error(stop: Stop) -> CodedError {
    if stop.max_time {
        CodedError::new(50, "MaxTimeMSExpired", "operation exceeded time limit")
    } else {
        CodedError::new(
            262,
            "ExceededTimeLimit",
            format!(
                "JavaScript execution exceeded the per-call time limit of {} ms (--javascript-time-limit-ms); give the command a maxTimeMS to bound it instead",
                limits().time.as_millis()
            ),
        )
    }
}

/// The compiled function for `source` (a function expression) with `scope`'s names bound:
/// compiled once per thread and kept.
pub(crate) fn function<'js>(
    ctx: &Ctx<'js>,
    cache: &mut HashMap<String, Persistent<Function<'static>>>,
    source: &str,
    scope: Option<&bson::Document>,
) -> Result<Function<'js>, CodedError> {
    let key = cache_key(source, scope);
    if let Some(f) = cache.get(&key) {
        return f.clone().restore(ctx).map_err(|e| describe(ctx, e));
    }
    let f = compile(ctx, source, scope)?;
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, Persistent::save(ctx, f.clone()));
    Ok(f)
}

fn cache_key(source: &str, scope: Option<&bson::Document>) -> String {
    match scope.filter(|s| !s.is_empty()) {
        None => source.to_owned(),
        Some(s) => format!("{source}\u{0}{s:?}"),
    }
}

fn compile<'js>(
    ctx: &Ctx<'js>,
    source: &str,
    scope: Option<&bson::Document>,
) -> Result<Function<'js>, CodedError> {
    let scope = scope.filter(|s| !s.is_empty());
    let names: Vec<&str> = scope.map_or_else(Vec::new, |s| s.keys().map(String::as_str).collect());
    if let Some(bad) = names.iter().find(|n| !is_identifier(n)) {
        return Err(js_failure(format!(
            "scope name {bad:?} is not a JavaScript identifier"
        )));
    }
    let wrapper = format!(
        "(function({}) {{ return ({source}\n); }})",
        names.join(", ")
    );
    let make: Function = ctx.eval(wrapper).map_err(|e| describe(ctx, e))?;
    let types = Types::new(ctx).map_err(|e| describe(ctx, e))?;
    let mut args = Args::new(ctx.clone(), names.len());
    for v in scope.iter().flat_map(|s| s.values()) {
        args.push_arg(types.value(v, 0)?)
            .map_err(|e| describe(ctx, e))?;
    }
    let made: Value = args.apply(&make).map_err(|e| describe(ctx, e))?;
    made.into_function()
        .ok_or_else(|| js_failure("the code is not a JavaScript function"))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Calls `f` with `this` and the arguments, converting the result to BSON.
pub(crate) fn call<'js>(
    ctx: &Ctx<'js>,
    f: &Function<'js>,
    this: Option<Value<'js>>,
    args: Vec<Value<'js>>,
) -> Result<Value<'js>, CodedError> {
    let mut a = Args::new(ctx.clone(), args.len());
    if let Some(this) = this {
        a.this(this).map_err(|e| describe(ctx, e))?;
    }
    for v in args {
        a.push_arg(v).map_err(|e| describe(ctx, e))?;
    }
    a.apply(f).map_err(|e| describe(ctx, e))
}
