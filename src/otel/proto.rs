//! The OTLP protobuf encoding of a batch of spans: `ExportTraceServiceRequest` of
//! `opentelemetry/proto/collector/trace/v1/trace_service.proto`, with the few fields a call's span uses, written
//! by hand (a dozen message fields do not need a code generator). Field numbers are the `.proto`'s; the tests
//! of `tests/it/otel.rs` decode what this writes with the official Python bindings (`opentelemetry-proto`).

use super::span::{Span, Status, Value};

/// OTLP `Span.SpanKind.SPAN_KIND_CLIENT`.
const SPAN_KIND_CLIENT: u64 = 3;
/// OTLP `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;

/// The body of one POST to `/v1/traces`: one resource (this sidecar), one instrumentation scope, the spans.
pub fn export_request(resource: &[(String, String)], spans: &[Span]) -> Vec<u8> {
    let mut res = Vec::new();
    for (k, v) in resource {
        message(&mut res, 1, |kv| key_value(kv, k, &Value::Str(v.clone())));
    }
    let mut scope_spans = Vec::new();
    message(&mut scope_spans, 1, |scope| {
        string(scope, 1, env!("CARGO_PKG_NAME"));
        string(scope, 2, env!("CARGO_PKG_VERSION"));
    });
    for s in spans {
        message(&mut scope_spans, 2, |out| span(out, s));
    }
    let mut resource_spans = Vec::new();
    bytes_field(&mut resource_spans, 1, &res);
    bytes_field(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    bytes_field(&mut request, 1, &resource_spans);
    request
}

fn span(out: &mut Vec<u8>, s: &Span) {
    bytes_field(out, 1, &s.trace.trace_id);
    bytes_field(out, 2, &s.trace.span_id);
    if let Some(parent) = &s.trace.parent_span_id {
        bytes_field(out, 4, parent);
    }
    string(out, 5, &s.name);
    varint_field(out, 6, SPAN_KIND_CLIENT);
    fixed64(out, 7, s.start_unix_nanos);
    fixed64(out, 8, s.end_unix_nanos);
    for (k, v) in &s.attributes {
        message(out, 9, |kv| key_value(kv, k, v));
    }
    if let Status::Error(message_text) = &s.status {
        message(out, 15, |st| {
            string(st, 2, message_text);
            varint_field(st, 3, STATUS_CODE_ERROR);
        });
    }
    // flags: the W3C trace flags in the low byte (bit 8, "parent is remote" known, set with bit 9 when the
    // parent came from the client).
    let remote = if s.trace.parent_span_id.is_some() {
        0x300
    } else {
        0x100
    };
    fixed32(out, 16, u32::from(s.trace.flags) | remote);
}

fn key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    string(out, 1, key);
    message(out, 2, |any| match value {
        Value::Str(s) => string(any, 1, s),
        Value::Bool(b) => varint_field(any, 2, u64::from(*b)),
        // int64 on the wire: two's complement as a varint.
        Value::Int(i) => varint_field(any, 3, *i as u64),
        // ArrayValue{1: repeated AnyValue{1: string}}
        Value::Strs(items) => message(any, 5, |array| {
            for item in items {
                message(array, 1, |v| string(v, 1, item));
            }
        }),
    });
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    tag(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(out, field, s.as_bytes());
}

/// A nested message: written apart, then as a length-delimited field.
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(out, field, &inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let enc = |v| {
            let mut b = Vec::new();
            varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(150), [0x96, 0x01]); // the protobuf guide's own example
        assert_eq!(enc(u64::MAX).len(), 10);
        // A negative int64 takes ten bytes, as protobuf writes it.
        let mut b = Vec::new();
        key_value(&mut b, "k", &Value::Int(-1));
        assert_eq!(
            &b[b.len() - 10..],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn a_key_value_is_laid_out_as_the_proto_says() {
        let mut b = Vec::new();
        key_value(&mut b, "a", &Value::Str("xy".into()));
        // KeyValue{1: "a", 2: AnyValue{1: "xy"}}
        assert_eq!(b, [0x0a, 1, b'a', 0x12, 4, 0x0a, 2, b'x', b'y']);
        let mut b = Vec::new();
        key_value(&mut b, "b", &Value::Bool(true));
        assert_eq!(b, [0x0a, 1, b'b', 0x12, 2, 0x10, 1]);
    }
}
