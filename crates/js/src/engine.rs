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
    pub(crate) static EMITS: RefCell<Vec<(Bson, Bson)>> = const { RefCell::new(Vec::new()) };
}

fn new_engine() -> Result<Engine, CodedError> {
    let rt = Runtime::new().map_err(|e| js_failure(format!("cannot start JavaScript: {e}")))?;
    rt.set_memory_limit(limits().memory_bytes);
    rt.set_max_stack_size(MAX_STACK);
    rt.set_interrupt_handler(Some(Box::new(|| {
        let stop = STOP.with(Cell::get).is_some_and(|s| Instant::now() >= s.at);
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
        ctx.eval::<(), _>("Object.freeze(globalThis);")
            .map_err(|e| describe(&ctx, e))
    })?;
    Ok(Engine {
        cache: HashMap::new(),
        ctx,
        rt,
    })
}

/// `emit(key, value)` of a map function: collected for [`crate::map`] to take.
fn emit<'js>(ctx: Ctx<'js>, key: Value<'js>, value: Value<'js>) -> rquickjs::Result<()> {
    let types = Types::new(&ctx)?;
    let pair = types
        .to_bson(&key, 0)
        .and_then(|k| Ok((k, types.to_bson(&value, 0)?)));
    match pair {
        Ok(pair) => {
            EMITS.with(|e| e.borrow_mut().push(pair));
            Ok(())
        }
        Err(e) => Err(rquickjs::Exception::throw_message(&ctx, &e.message)),
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
        let cache = &mut engine.cache;
        let out = engine.ctx.with(|ctx| f(&ctx, cache));
        STOP.with(|s| s.set(None));
        if INTERRUPTED.with(Cell::get) {
            return Err(timeout_error(stop));
        }
        if out.is_err() && engine.rt.memory_usage().malloc_size as usize >= limits().memory_bytes {
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
