//! Config parsing and validation: any text is accepted or refused with a named field, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = tollgate::config::Config::from_str(text) {
        let _ = config.validate(std::path::Path::new("/nonexistent"));
    }
});
