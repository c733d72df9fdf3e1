//! The frame codec on arbitrary bytes: never panics, never reads past what it
//! was given, and decodes the same frames whether the stream arrives in one
//! piece or split at an arbitrary point (as partial reads deliver it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::tcp::frame::{self, Decoded};

const MAX: usize = 4096;

/// Decodes everything decodable; returns the frames (None for an empty frame)
/// and whether a too-large length stopped the stream.
fn decode_all(buf: &[u8]) -> (Vec<Option<(u8, Vec<u8>)>>, usize, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        match frame::decode(&buf[pos..], MAX) {
            Ok(None) => return (out, pos, false),
            Ok(Some((decoded, used))) => {
                assert!(used >= 4 && pos + used <= buf.len());
                pos += used;
                out.push(match decoded {
                    Decoded::Empty => None,
                    Decoded::Frame { kind, payload } => {
                        // Re-encoding gives back exactly the bytes consumed.
                        assert_eq!(frame::encode(kind, payload), buf[pos - used..pos]);
                        Some((kind, payload.to_vec()))
                    }
                });
            }
            Err(too_large) => {
                assert!(too_large.declared as usize > MAX);
                return (out, pos, true);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = decode_all(data);
    // Feed the same bytes in two reads, split where the first byte says.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut buf = data[..split].to_vec();
    let (mut frames, used, stopped) = decode_all(&buf);
    if !stopped {
        buf.drain(..used);
        buf.extend_from_slice(&data[split..]);
        let (rest, _, stopped) = decode_all(&buf);
        frames.extend(rest);
        assert_eq!((frames, stopped), (whole.0, whole.2));
    }
});
