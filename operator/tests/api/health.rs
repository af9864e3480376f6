//! `/healthz`: it watches the controller loop.

use crate::fixture;
use layergate_operator::source::Source;
use serde_json::Value;
use std::time::Duration;

#[test]
fn healthz_fails_while_the_controller_loop_is_stuck() {
    let f = fixture("healthz", 120, |_, t| t);
    assert_eq!(
        f.call("GET", "/healthz", None, Value::Null).0,
        200,
        "no loop to watch"
    );
    // A short threshold, so that a stuck loop shows on any machine (a monotonic clock cannot
    // be set back five minutes on a machine up for less).
    f.source.state().set_stuck_after(Duration::from_millis(200));
    f.source.state().beat();
    assert_eq!(f.call("GET", "/healthz", None, Value::Null).0, 200);
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = f.call("GET", "/healthz", None, Value::Null);
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("controller loop"),
        "{body}"
    );
    f.source.state().beat();
    assert_eq!(f.call("GET", "/healthz", None, Value::Null).0, 200);
}
