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
    /// The declared length; with fewer than four prefix bytes read, the least
    /// it can be whatever follows.
    pub declared: u32,
    pub max: usize,
    /// All four prefix bytes were read (else `declared` is a lower bound).
    pub complete: bool,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at_least = if self.complete { "" } else { "at least " };
        write!(
            f,
            "frame length {at_least}{} exceeds the limit of {} bytes",
            self.declared, self.max
        )
    }
}

impl std::error::Error for TooLarge {}

/// Decodes the first frame in `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the frame and how many bytes it used. `max_len` bounds LEN.
///
/// # Errors
/// [`TooLarge`] as soon as the prefix declares more than `max_len`, even before
/// all four of its bytes arrived: `hi\n` from a person at a terminal can never
/// become a valid prefix, and waiting for a fourth byte would leave them
/// staring at a silent connection until the login timeout.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Decoded<'_>, usize)>, TooLarge> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        let mut padded = [0u8; PREFIX_LEN];
        padded[..buf.len()].copy_from_slice(buf);
        let least = u32::from_be_bytes(padded);
        if least as usize > max_len {
            return Err(TooLarge {
                declared: least,
                max: max_len,
                complete: false,
            });
        }
        return Ok(None);
    };
    let declared = u32::from_be_bytes(*prefix);
    let len = declared as usize;
    if len > max_len {
        return Err(TooLarge {
            declared,
            max: max_len,
            complete: true,
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

/// What a stream that does not start with a frame most likely is. Only asked
/// of a connection's first bytes, once they cannot be a frame (see [`decode`]):
/// a valid first frame below 16 MiB starts with a zero byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// An HTTP request line (`GET / HTTP/1.1`, a probe, a browser, curl).
    Http,
    /// A TLS ClientHello sent to a plain-TCP port.
    Tls,
    /// Printable text: a person at `nc` or `telnet`, a text protocol.
    Text,
}

impl Foreign {
    /// Recognises the common mistakes from the first bytes of a stream.
    pub fn sniff(start: &[u8]) -> Option<Foreign> {
        const METHODS: [&[u8]; 9] = [
            b"GET ",
            b"HEAD ",
            b"POST ",
            b"PUT ",
            b"DELETE ",
            b"OPTIONS ",
            b"PATCH ",
            b"CONNECT ",
            b"PRI ",
        ];
        if METHODS.iter().any(|m| start.starts_with(m)) {
            return Some(Foreign::Http);
        }
        // A TLS handshake record: content type 22, version 3.x.
        if start.len() >= 2 && start[0] == 0x16 && start[1] == 0x03 {
            return Some(Foreign::Tls);
        }
        let printable = |b: &u8| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n');
        let head = &start[..start.len().min(64)];
        (!head.is_empty() && head.iter().all(printable)).then_some(Foreign::Text)
    }

    /// The ERROR message that tells the sender what this port is.
    pub fn explanation(self) -> &'static str {
        match self {
            Foreign::Http => {
                "this port speaks Switchboard's binary protocol, not HTTP: a frame is a 4-byte big-endian length, a type byte and a JSON payload (see PROTOCOL.md); /healthz and /metrics are served on the admin listener (admin.bind_address)"
            }
            Foreign::Tls => {
                "this port speaks Switchboard's binary protocol over plain TCP, not TLS: connect without TLS, or to the port the server serves TLS on (see PROTOCOL.md)"
            }
            Foreign::Text => {
                "this port speaks Switchboard's binary protocol, not text: a frame is a 4-byte big-endian length, a type byte and a JSON payload (see PROTOCOL.md; switchboard-cli session speaks it from a shell)"
            }
        }
    }
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
                max: 1 << 20,
                complete: true
            })
        );
        assert_eq!(
            decode(&[0, 0, 0, 65], 64),
            Err(TooLarge {
                declared: 65,
                max: 64,
                complete: true
            })
        );
        assert!(matches!(decode(&[0, 0, 0, 64], 64), Ok(None)));
        assert_eq!(decode(&[0, 0, 0], 64), Ok(None));
    }

    /// HTTP, a TLS ClientHello and typed text are told apart from binary garbage.
    #[test]
    fn foreign_protocols_are_recognised() {
        assert_eq!(
            Foreign::sniff(b"GET /healthz HTTP/1.1\r\n"),
            Some(Foreign::Http)
        );
        assert_eq!(Foreign::sniff(b"POST /x HTTP/1.0"), Some(Foreign::Http));
        assert_eq!(
            Foreign::sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Foreign::Tls)
        );
        assert_eq!(Foreign::sniff(b"hello\r\n"), Some(Foreign::Text));
        assert_eq!(Foreign::sniff(b"hi\n"), Some(Foreign::Text));
        assert_eq!(Foreign::sniff(&[0xff, 0xfe, 0x00, 0x01]), None);
        assert_eq!(Foreign::sniff(b""), None);
    }

    /// A partial prefix that can only grow past the limit is refused at once
    /// (`hi\n` at a terminal); one that may still fit waits for more bytes.
    #[test]
    fn a_partial_prefix_already_over_the_limit_is_refused() {
        assert_eq!(
            decode(b"hi\n", 1 << 20),
            Err(TooLarge {
                declared: u32::from_be_bytes(*b"hi\n\0"),
                max: 1 << 20,
                complete: false
            })
        );
        assert!(
            decode(b"h", 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("at least")
        );
        assert_eq!(decode(&[0, 0x10], 1 << 20), Ok(None));
        assert_eq!(decode(&[], 1 << 20), Ok(None));
    }
}
