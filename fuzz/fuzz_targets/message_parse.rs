//! The message parser on arbitrary payloads: never panics; whatever decodes
//! re-encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::tcp::frame::{self, Decoded};
use switchboard::tcp::{Request, ServerMessage};

fn round_trip_request(request: &Request) {
    let bytes = request.to_frame();
    let Ok(Some((Decoded::Frame { kind, payload }, _))) = frame::decode(&bytes, usize::MAX) else {
        panic!("an encoded request is one frame");
    };
    assert_eq!(Request::decode(kind, payload).as_ref(), Ok(request));
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else { return };
    if let Ok(request) = Request::decode(kind, payload) {
        round_trip_request(&request);
    }
    if let Ok(message) = ServerMessage::decode(kind, payload) {
        let bytes = message.to_frame();
        if let Ok(Some((Decoded::Frame { kind, payload }, _))) = frame::decode(&bytes, usize::MAX) {
            assert_eq!(ServerMessage::decode(kind, payload), Ok(message));
        }
    }
});
