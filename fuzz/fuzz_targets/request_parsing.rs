//! JSON-RPC and HTTP request parsing: the `/mcp` message parser, the JSON body extractor and
//! its U+0000 guard, the Content-Type and URI guards, and the credential parsers (run tokens,
//! session ids, approval tokens, API keys). Properties in
//! `awooop::fuzz_targets::request_parsing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| awooop::fuzz_targets::request_parsing(data));
