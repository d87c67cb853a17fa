//! The process-wide bounds, in a test binary of their own because `configure` is global.

use std::time::{Duration, Instant};

use bson::rawdoc;
use mangrove_js::{Settings, call, configure, where_matches};

#[test]
fn default_time_and_memory_bounds_and_the_off_switch() {
    configure(Settings {
        enabled: true,
        time: Duration::from_millis(300),
        memory_bytes: 32 << 20,
    });
    let started = Instant::now();
    let e = where_matches("function() { while (true) {} }", &rawdoc! {}).unwrap_err();
    assert_eq!((e.code, e.code_name), (262, "ExceededTimeLimit"));
    assert!(started.elapsed() < Duration::from_secs(5));

    let e = call(
        "function() { var a = []; for (;;) a.push(new Array(1000).fill('xxxxxxxx')); }",
        None,
        None,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.code, 139);
    assert!(e.message.to_lowercase().contains("memory"), "{}", e.message);
    assert_eq!(
        call("function() { return 1 + 1; }", None, None, &[]).unwrap(),
        bson::Bson::Double(2.0)
    );

    assert!(mangrove_js::enabled());
    configure(Settings {
        enabled: false,
        ..Settings::default()
    });
    assert!(!mangrove_js::enabled());
}
