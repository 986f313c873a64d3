//! The redaction engine: pattern redaction idempotent and panic-free; exact-value redaction
//! leaves no credential behind, raw, encoded (mixed per character, hex, base64 at an offset)
//! or split across strings. Properties in `awooop::fuzz_targets::redactor`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| awooop::fuzz_targets::redactor(data));
