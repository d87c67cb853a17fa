//! The panic policy: a panic in a storage thread is never survived.
//!
//! A database that keeps serving with a dead log writer is worse than one that restarts and
//! recovers: committers would wait forever, and the state the panic interrupted (an install
//! half done, a lock poisoned) is not one anybody reasoned about. So:
//!
//! - **The server stops.** `mangrove serve` installs a panic hook that logs the panic (thread,
//!   location, message) as one error line and then aborts the process, exactly as
//!   `panic = "abort"` would, for a panic in any thread. The next start recovers from the log,
//!   which holds every acknowledged commit.
//! - **Except panics this crate expects and catches.** redb panics on some damaged pages; the
//!   base store runs every redb call under [`catch`] and turns such a panic into
//!   `DataCorruption` (see `base.rs`). [`catch`] counts, per thread, how many such guards are
//!   active, and the hook asks [`unwinding_is_caught`] before aborting, so a damaged page
//!   stays an error for the one read that met it. (This is why the release profile does not
//!   simply say `panic = "abort"`.)
//! - **Embedded, without the hook, nobody waits forever.** If the log writer thread panics
//!   anyway (tests, or a program embedding the engine), the engine fails its log as after a
//!   failed fdatasync before the panic goes on: waiting committers get `LogFailed`, later
//!   commits are refused. A panic in the checkpointer does the same, since without it memory
//!   and the log would grow without bound. These catches use plain `catch_unwind`, not
//!   [`catch`]: the hook must still see them as uncaught.
//!
//! [`arm_log_writer_panic`] is the test hook that proves it: the server's `logWriterPanic`
//! fail point (only with `--enable-test-commands`) arms it, and the writer panics while
//! installing its next batch.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// How many [`catch`] guards are active on this thread.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic on this thread now will be caught by this crate (a redb call under
/// [`catch`]) and turned into an error: the panic hook then only logs it.
pub fn unwinding_is_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// Runs `f`, catching a panic it expects (see the module comment), and marks the thread
/// meanwhile so that the panic hook lets the unwinding happen.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    result
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

static LOG_WRITER_PANIC: AtomicBool = AtomicBool::new(false);

/// Test hook: the log writer thread of this process panics while installing its next batch
/// (once). For the tests of the panic policy; the server reaches it only through the
/// `logWriterPanic` fail point.
#[doc(hidden)]
pub fn arm_log_writer_panic() {
    LOG_WRITER_PANIC.store(true, Ordering::SeqCst);
}

/// Consumes the armed [`arm_log_writer_panic`], if any. One relaxed load per batch otherwise.
pub(crate) fn log_writer_panic_armed() -> bool {
    LOG_WRITER_PANIC.load(Ordering::Relaxed) && LOG_WRITER_PANIC.swap(false, Ordering::SeqCst)
}
