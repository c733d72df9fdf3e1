//! Bytes <-> frames: `[u32 big-endian LEN][u8 TYPE][PAYLOAD]`, LEN counting the type byte.
//!
//! [`decode`] inspects buffered bytes without allocating: it says "incomplete"
//! (read more) apart from a real protocol error, and checks `1 <= LEN <= max`
//! before anything is sized from LEN, so a hostile length costs nothing.

use std::fmt;

use serde::Serialize;

/// The length prefix.
pub const PREFIX_LEN: usize = 4;
/// Prefix plus type byte.
pub const HEADER_LEN: usize = 5;

/// One decoded unit of the byte stream, borrowing from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Frame {
        kind: u8,
        payload: &'a [u8],
    },
    /// LEN = 0: no type byte. The frame boundary is intact, so the stream goes on.
    Empty,
}

/// A length the stream cannot recover from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub declared: u32,
    pub max: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame length {} exceeds the limit of {} bytes",
            self.declared, self.max
        )
    }
}

impl std::error::Error for TooLarge {}

/// Decodes the first frame in `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the frame and how many bytes it used. `max_len` bounds LEN.
///
/// # Errors
/// [`TooLarge`] as soon as the prefix declares more than `max_len`.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Decoded<'_>, usize)>, TooLarge> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let declared = u32::from_be_bytes(*prefix);
    let len = declared as usize;
    if len > max_len {
        return Err(TooLarge {
            declared,
            max: max_len,
        });
    }
    if len == 0 {
        return Ok(Some((Decoded::Empty, PREFIX_LEN)));
    }
    let total = PREFIX_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = Decoded::Frame {
        kind: buf[PREFIX_LEN],
        payload: &buf[HEADER_LEN..total],
    };
    Ok(Some((frame, total)))
}

/// Encodes a frame around raw payload bytes.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// Encodes a frame whose payload is `body` as compact JSON, serialized straight
/// into the frame buffer.
pub fn encode_json<T: Serialize + ?Sized>(kind: u8, body: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    // Serializing plain structs of strings and numbers into a Vec cannot fail.
    if serde_json::to_writer(&mut out, body).is_err() {
        out.truncate(HEADER_LEN);
        out.extend_from_slice(b"{}");
    }
    let len = (out.len() - PREFIX_LEN) as u32;
    out[..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from PROTOCOL.md: `{}` as USER_LIST_REQUEST.
    #[test]
    fn encodes_the_documented_example() {
        assert_eq!(encode(0x05, b"{}"), [0, 0, 0, 3, 5, b'{', b'}']);
        assert_eq!(
            encode_json(0x05, &serde_json::json!({})),
            [0, 0, 0, 3, 5, b'{', b'}']
        );
    }

    /// Every prefix of two back-to-back frames is incomplete or yields exactly the first frame.
    #[test]
    fn partial_reads_at_every_split_point_never_lose_a_frame() {
        let mut stream = encode(0x11, br#"{"timestamp":1}"#);
        stream.extend(encode(0x05, b"{}"));
        let first_len = stream.len() - 7;
        for split in 0..=stream.len() {
            let head = &stream[..split];
            match decode(head, 1024).unwrap() {
                None => assert!(split < first_len, "split {split}"),
                Some((Decoded::Frame { kind, payload }, used)) => {
                    assert!(split >= first_len);
                    assert_eq!(
                        (kind, payload, used),
                        (0x11, &br#"{"timestamp":1}"#[..], first_len)
                    );
                    let rest = &stream[used..];
                    let (second, used2) = decode(rest, 1024).unwrap().unwrap();
                    assert_eq!(
                        second,
                        Decoded::Frame {
                            kind: 5,
                            payload: b"{}"
                        }
                    );
                    assert_eq!(used + used2, stream.len());
                }
                Some((Decoded::Empty, _)) => panic!("no empty frame here"),
            }
        }
    }

    /// Byte-at-a-time feeding reassembles the frames in order.
    #[test]
    fn byte_at_a_time_feeding_reassembles_frames() {
        let frames: Vec<Vec<u8>> = (0..5u8)
            .map(|i| encode(i + 1, &vec![b'x'; i as usize * 3]))
            .collect();
        let stream: Vec<u8> = frames.concat();
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        for b in stream {
            buf.push(b);
            while let Some((Decoded::Frame { kind, payload }, used)) = decode(&buf, 64).unwrap() {
                seen.push((kind, payload.len()));
                buf.drain(..used);
            }
        }
        assert_eq!(seen, vec![(1, 0), (2, 3), (3, 6), (4, 9), (5, 12)]);
        assert!(buf.is_empty());
    }

    /// LEN = 0 is reported as an empty frame of four bytes; the stream continues.
    #[test]
    fn a_zero_length_is_an_empty_frame() {
        let mut stream = vec![0, 0, 0, 0];
        stream.extend(encode(5, b"{}"));
        let (decoded, used) = decode(&stream, 64).unwrap().unwrap();
        assert_eq!((decoded, used), (Decoded::Empty, 4));
        assert!(matches!(
            decode(&stream[4..], 64),
            Ok(Some((Decoded::Frame { kind: 5, .. }, 7)))
        ));
    }

    /// An oversized length is refused from the prefix alone, whatever follows.
    #[test]
    fn an_oversized_length_is_refused_from_the_prefix() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(TooLarge {
                declared: u32::MAX,
                max: 1 << 20
            })
        );
        assert_eq!(
            decode(&[0, 0, 0, 65], 64),
            Err(TooLarge {
                declared: 65,
                max: 64
            })
        );
        assert!(matches!(decode(&[0, 0, 0, 64], 64), Ok(None)));
        assert_eq!(decode(&[0, 0, 0], 64), Ok(None));
    }
}
