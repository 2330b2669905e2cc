//! The config file: any text is either refused with an error or becomes a
//! configuration; never a panic.
#![no_main]

use kubelet_guard::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = Settings::from_yaml(text) {
        let _ = settings.validate();
    }
});
