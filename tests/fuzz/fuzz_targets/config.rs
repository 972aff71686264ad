//! The config parser and validator never panic, whatever the file holds; what they accept
//! compiles into rules without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use throttle_ctl::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::from_yaml(text) {
        let rules = config.compile_rules();
        assert_eq!(rules.len(), config.rules.len());
        assert!(rules.iter().all(|r| r.limit > 0 && r.window.ns > 0 && r.window.inv > 0));
    }
});
