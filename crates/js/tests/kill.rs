//! The kill check (`set_kill_check`, the server's `killOp`), in a test binary of its own
//! because the check is process-wide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bson::rawdoc;
use mangrove_js::{set_kill_check, where_matches};

static KILLED: AtomicBool = AtomicBool::new(false);

fn killed() -> bool {
    KILLED.load(Ordering::Relaxed)
}

/// Sets the flag after `after`, from another thread, as `killOp` does.
fn kill_after(after: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        KILLED.store(true, Ordering::Relaxed);
    })
}

#[test]
fn a_kill_interrupts_a_busy_loop_and_a_sleep() {
    set_kill_check(killed);
    assert!(where_matches("function() { return true; }", &rawdoc! {}).unwrap());
    for source in [
        "function() { while (true) {} }",
        "function() { sleep(30000); return true; }",
    ] {
        KILLED.store(false, Ordering::Relaxed);
        let killer = kill_after(Duration::from_millis(200));
        let started = Instant::now();
        let e = where_matches(source, &rawdoc! {}).unwrap_err();
        assert_eq!((e.code, e.code_name), (11601, "Interrupted"), "{source}");
        assert!(started.elapsed() < Duration::from_secs(5), "{source}");
        killer.join().unwrap();
    }
    // The next call of a new operation runs normally.
    KILLED.store(false, Ordering::Relaxed);
    assert!(where_matches("function() { return true; }", &rawdoc! {}).unwrap());
}
