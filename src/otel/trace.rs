//! The W3C trace context of one call (https://www.w3.org/TR/trace-context/): the client's `traceparent`, when
//! valid, makes the call's span its child; otherwise the call starts a trace. The upstream gets a
//! `traceparent` naming the call's span, so its own spans hang under it. The ids come from the call id (a
//! UUIDv7: 74 random bits), so no random number is drawn per call.

use uuid::Uuid;

/// The headers, lower case as HTTP/2 wants them.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The call's own span.
    pub span_id: [u8; 8],
    /// The client's span (`None`: the call starts the trace).
    pub parent_span_id: Option<[u8; 8]>,
    /// The trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl Trace {
    /// The call's trace: a child of the client's `traceparent` when it is valid, else a new sampled trace
    /// whose id is the call id's bytes.
    pub fn for_call(call_id: Uuid, traceparent: Option<&[u8]>) -> Trace {
        let id = call_id.as_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&id[8..]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        match traceparent.and_then(parse) {
            // Flags this version does not define are not passed on (W3C: sampled 0x01, random 0x02).
            Some((trace_id, parent, flags)) => Trace {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                flags: flags & 0x03,
            },
            None => Trace {
                trace_id: *id,
                span_id,
                parent_span_id: None,
                flags: 1,
            },
        }
    }

    /// Parent-based sampling: exported unless the client's trace said not to.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` the upstream gets: this call's span as the parent, the client's flags.
    pub fn header(&self) -> http::HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        );
        http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static(
            "00-00000000000000000000000000000001-0000000000000001-00",
        ))
    }
}

/// `version-traceid-parentid-flags`, by the specification's rules: lower-case hex, version `ff` invalid,
/// all-zero ids invalid; a version above 00 may carry more fields after a `-`.
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let value = value.trim_ascii();
    if value.len() < 55 {
        return None;
    }
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let (version, trace, parent, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if ![version, trace, parent, flags].iter().all(|s| lower_hex(s)) || version == b"ff" {
        return None;
    }
    if version == b"00" && value.len() != 55
        || version != b"00" && value.len() > 55 && value[55] != b'-'
    {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flag = [0u8; 1];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    hex::decode_to_slice(flags, &mut flag).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flag[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_makes_the_call_its_child() {
        let call = Uuid::now_v7();
        let t = Trace::for_call(call, Some(CLIENT.as_bytes()));
        assert_eq!(hex::encode(t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_span_id.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(&t.span_id[..], &call.as_bytes()[8..]);
        assert!(t.sampled());
        let sent = t.header();
        let sent = sent.to_str().unwrap();
        assert_eq!(
            sent,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                hex::encode(t.span_id)
            )
        );
        // What we send is itself a valid traceparent.
        assert!(parse(sent.as_bytes()).is_some());
    }

    #[test]
    fn an_unsampled_client_trace_is_followed_and_not_sampled() {
        let t = Trace::for_call(
            Uuid::now_v7(),
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(!t.sampled());
        assert!(t.header().to_str().unwrap().ends_with("-00"));
        // Flags no version defines are not passed on.
        let t = Trace::for_call(
            Uuid::now_v7(),
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"),
        );
        assert!(t.header().to_str().unwrap().ends_with("-03"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", // no flags
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 has no more fields
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version not hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", // flags upper case
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // no dash before more
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x",
        ];
        for b in bad {
            let call = Uuid::now_v7();
            let t = Trace::for_call(call, Some(b.as_bytes()));
            assert_eq!(t.parent_span_id, None, "{b}");
            assert_eq!(&t.trace_id, call.as_bytes(), "{b}");
            assert!(t.sampled());
        }
        // A later version may add fields after a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(Trace::for_call(Uuid::now_v7(), Some(later.as_bytes()))
            .parent_span_id
            .is_some());
    }

    proptest! {
        /// A valid header with one byte changed: either still valid (and then followed), or a new trace.
        #[test]
        fn a_header_one_byte_off_is_followed_only_if_still_valid(at in 0usize..55, byte in any::<u8>()) {
            let mut h = CLIENT.as_bytes().to_vec();
            h[at] = byte;
            let t = Trace::for_call(Uuid::now_v7(), Some(&h));
            match parse(&h) {
                Some((trace, parent, _)) => {
                    prop_assert_eq!(t.trace_id, trace);
                    prop_assert_eq!(t.parent_span_id, Some(parent));
                }
                None => prop_assert_eq!(t.parent_span_id, None),
            }
            let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            let still_valid = if [2, 35, 52].contains(&at) { byte == b'-' } else { lower_hex(byte) }
                && !(at < 2 && h[0..2] == *b"ff");
            prop_assert_eq!(parse(&h).is_some(), still_valid, "{}", String::from_utf8_lossy(&h));
        }

        #[test]
        fn any_header_value_gives_a_trace_and_a_valid_header(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let t = Trace::for_call(Uuid::now_v7(), Some(&bytes));
            let h = t.header();
            let (trace, _, flags) = parse(h.as_bytes()).expect("our header parses");
            prop_assert_eq!(trace, t.trace_id);
            prop_assert_eq!(flags, t.flags);
        }
    }
}
