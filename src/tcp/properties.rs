//! Property tests for the wire format: every message survives encode/decode,
//! and a stream of frames decodes the same however it is split into reads.

use proptest::prelude::*;

use super::frame::{self, Decoded};
use super::message::{
    AccountDelete, CallRequest, Credentials, GuestLogin, Hangup, Heartbeat, Hello, IceCandidate,
    PasswordChange, ReqId, Request, Resume, Sdp, ServerMessage,
};

fn req_id() -> impl Strategy<Value = Option<ReqId>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|n| Some(ReqId::Int(n))),
        ".*".prop_map(|s| Some(ReqId::Text(s))),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (".*", ".*", req_id()).prop_map(|(username, password_hash, req_id)| {
            Request::Login(Credentials {
                username,
                password_hash,
                req_id,
            })
        }),
        (".*", req_id())
            .prop_map(|(to_user_id, req_id)| Request::Call(CallRequest { to_user_id, req_id })),
        (".*", ".*", ".*", "(?s).*", req_id()).prop_map(
            |(call_id, from_user_id, to_user_id, sdp, req_id)| {
                Request::SdpOffer(Sdp {
                    call_id: Some(call_id),
                    room_id: None,
                    from_user_id,
                    to_user_id,
                    sdp,
                    req_id,
                })
            }
        ),
        (".*", "(?s).*", proptest::option::of(".*"), any::<u32>()).prop_map(
            |(call_id, candidate, sdp_mid, sdp_mline_index)| {
                Request::IceCandidate(IceCandidate {
                    call_id: Some(call_id),
                    room_id: None,
                    from_user_id: String::new(),
                    to_user_id: String::new(),
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                    req_id: None,
                })
            }
        ),
        (proptest::option::of(".*"), req_id())
            .prop_map(|(call_id, req_id)| Request::Hangup(Hangup { call_id, req_id })),
        (proptest::option::of(any::<i64>()), req_id()).prop_map(|(t, req_id)| {
            Request::Heartbeat(Heartbeat {
                timestamp: t.map(Into::into),
                server_time: None,
                req_id,
            })
        }),
        (
            any::<u32>(),
            proptest::option::of(".*"),
            proptest::collection::vec(".*", 0..4),
            req_id()
        )
            .prop_map(|(protocol_version, client_name, capabilities, req_id)| {
                Request::Hello(Hello {
                    protocol_version,
                    client_name,
                    capabilities,
                    req_id,
                })
            }),
        (".*", req_id()).prop_map(|(session_token, req_id)| Request::Resume(Resume {
            session_token,
            req_id
        })),
        (".*", req_id()).prop_map(|(display_name, req_id)| Request::GuestLogin(GuestLogin {
            display_name,
            req_id
        })),
        (".*", ".*", req_id()).prop_map(|(old_password_hash, new_password_hash, req_id)| {
            Request::PasswordChange(PasswordChange {
                old_password_hash,
                new_password_hash,
                req_id,
            })
        }),
        (".*", req_id()).prop_map(|(password_hash, req_id)| Request::AccountDelete(
            AccountDelete {
                password_hash,
                req_id
            }
        )),
    ]
}

fn one_frame(bytes: &[u8]) -> (u8, &[u8]) {
    match frame::decode(bytes, usize::MAX) {
        Ok(Some((Decoded::Frame { kind, payload }, used))) if used == bytes.len() => {
            (kind, payload)
        }
        other => panic!("not exactly one frame: {other:?}"),
    }
}

proptest! {
    /// Any request, with any strings (quotes, control characters, non-ASCII),
    /// decodes back to itself.
    #[test]
    fn requests_round_trip(request in request()) {
        let bytes = request.to_frame();
        let (kind, payload) = one_frame(&bytes);
        prop_assert_eq!(Request::decode(kind, payload), Ok(request));
    }

    /// Server errors round-trip too, with their text made safe for v1 clients.
    #[test]
    fn errors_round_trip(code in 100u16..600, message in ".*") {
        let sent = ServerMessage::error(code, message.clone(), None);
        let bytes = sent.to_frame();
        let (kind, payload) = one_frame(&bytes);
        let got = ServerMessage::decode(kind, payload);
        prop_assert_eq!(got, Ok(ServerMessage::error(code, message.replace('"', "'"), None)));
    }

    /// A stream of frames (empty ones included) decodes to the same frames
    /// however it is cut into reads.
    #[test]
    fn a_stream_split_anywhere_decodes_the_same(
        frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()), 0..12),
        cuts in proptest::collection::vec(0usize..4000, 0..12),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (kind, payload, empty) in &frames {
            if *empty {
                stream.extend_from_slice(&[0, 0, 0, 0]);
                expected.push(None);
            } else {
                stream.extend(frame::encode(*kind, payload));
                expected.push(Some((*kind, payload.clone())));
            }
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut from = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[from..cut]);
            from = cut;
            while let Some((decoded, used)) = frame::decode(&buf, 1 << 20).expect("within the limit") {
                got.push(match decoded {
                    Decoded::Empty => None,
                    Decoded::Frame { kind, payload } => Some((kind, payload.to_vec())),
                });
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, expected);
    }
}
