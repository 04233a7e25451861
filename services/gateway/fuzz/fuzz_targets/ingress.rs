//! Fuzzes ingress decoding: any bytes a client can put in a text frame.
//! Decoding must never panic, and every refusal must carry one of the
//! ingress close codes (4001–4004), so the client always learns why.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the time they are decoded (the websocket
    // layer closes 1007 otherwise).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(reason) = filament_gateway::decode_client_frame(text) {
        assert!(
            (4001..=4004).contains(&reason.code()),
            "{reason:?} is not an ingress close reason"
        );
    }
});
