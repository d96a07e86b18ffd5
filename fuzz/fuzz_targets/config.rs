//! The TOML configuration (`config`): any text is refused with a message
//! or becomes a plan that validated once; a valid plan reloads as itself.
#![no_main]

use ackgate::config::{FileConfig, Plan, RunArgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = match FileConfig::parse(text) {
        Ok(f) => f,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let Ok(plan) = Plan::resolve(&RunArgs::default(), &f) else {
        return;
    };
    assert!(plan.backend_count() > 0, "a plan without backends");
    assert!(!plan.protected().is_empty(), "a plan protecting nothing");
    plan.reloadable_as(&plan)
        .expect("a plan reloads as itself");
});
