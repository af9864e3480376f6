#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| layergate_fuzz::request(data));
