//! The wire shapes of both protocols (reference §1–§2), as the tap reads them: one permissive type for
//! every JSON object (compat chunk or body, native event or body, error), unknown fields ignored.

use serde::Deserialize;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy)]
pub(super) struct WireTokens {
    pub(super) input: u64,
    pub(super) cached: u64,
    pub(super) output: u64,
    pub(super) reasoning: Option<u64>,
}

/// One JSON object of either protocol: a compat chunk or body, a native event or body, or an error.
/// Fields are optional and unknown fields ignored, so every shape of the reference parses with this type.
#[derive(Deserialize, Default)]
pub(super) struct Wire<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    pub(super) output: Option<NativeOutput<'a>>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) error: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) code: Option<serde_json::Value>,
}

/// The fallback when a chunk's content has a shape [`Wire`] does not expect: keep what the record needs.
#[derive(Deserialize, Default)]
pub(super) struct WireMinimal {
    #[serde(default)]
    pub(super) request_id: Option<String>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) error: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(borrow, default)]
    pub(super) delta: Option<Message<'a>>,
    #[serde(borrow, default)]
    pub(super) message: Option<Message<'a>>,
    #[serde(borrow, default)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct NativeOutput<'a> {
    #[serde(borrow, default)]
    pub(super) choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct Message<'a> {
    #[serde(borrow, default)]
    pub(super) content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
pub(super) struct ToolCall<'a> {
    #[serde(borrow, default)]
    pub(super) function: Option<ToolFunction<'a>>,
}

#[derive(Deserialize)]
pub(super) struct ToolFunction<'a> {
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) prompt_tokens: Option<Count>,
    #[serde(default)]
    pub(super) completion_tokens: Option<Count>,
    #[serde(default)]
    pub(super) input_tokens: Option<Count>,
    #[serde(default)]
    pub(super) output_tokens: Option<Count>,
    #[serde(default)]
    pub(super) completion_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    pub(super) output_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    pub(super) prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct OutputDetails {
    #[serde(default)]
    pub(super) reasoning_tokens: Option<Count>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct PromptDetails {
    #[serde(default)]
    pub(super) cached_tokens: Option<Count>,
}

/// A token count as the wire wrote it. Any integral JSON number is a count (`406`, `406.0`, `4.06e2`); anything
/// else (a fraction, a negative, a string) makes the usage object unreadable, never a silent zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    Valid(u64),
    Invalid,
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
                Ok(Count::Valid(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
                Ok(u64::try_from(v).map_or(Count::Invalid, Count::Valid))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Count, E> {
                // 2^64 is exactly representable; anything at or above it is out of range.
                let integral = v.is_finite()
                    && v >= 0.0
                    && v.fract() == 0.0
                    && v < 18_446_744_073_709_551_616.0;
                Ok(if integral {
                    Count::Valid(v as u64)
                } else {
                    Count::Invalid
                })
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count::Invalid)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count::Invalid)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Count::Invalid)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Count::Invalid)
            }
        }
        d.deserialize_any(V)
    }
}

/// What a usage object says.
#[derive(Debug, Clone, Copy)]
pub(super) enum UsageRead {
    /// No token counts in it (e.g. `"usage": {}`).
    Absent,
    Read(WireTokens),
    /// A count is there but is not a count.
    Unreadable,
}

impl WireUsage {
    pub(super) fn read(&self) -> UsageRead {
        let details = self
            .completion_tokens_details
            .or(self.output_tokens_details);
        let fields = [
            self.prompt_tokens.or(self.input_tokens),
            self.completion_tokens.or(self.output_tokens),
            self.prompt_tokens_details.and_then(|d| d.cached_tokens),
            details.and_then(|d| d.reasoning_tokens),
        ];
        if fields.contains(&Some(Count::Invalid)) {
            return UsageRead::Unreadable;
        }
        let value = |c: Option<Count>| match c {
            Some(Count::Valid(v)) => Some(v),
            _ => None,
        };
        let [input, output, cached, reasoning] = fields.map(value);
        if input.is_none() && output.is_none() {
            return UsageRead::Absent;
        }
        UsageRead::Read(WireTokens {
            input: input.unwrap_or(0),
            cached: cached.unwrap_or(0),
            output: output.unwrap_or(0),
            reasoning,
        })
    }
}

/// Parses one JSON object of either protocol. When the full shape does not parse (a field of an unexpected
/// type, invalid UTF-8 in a text), a minimal parse still salvages usage and errors; the second value says
/// the object was only partly understood (counted as a parse error).
pub(super) fn parse_wire(data: &[u8]) -> Option<(Wire<'_>, bool)> {
    let data = skip_bom(data.trim_ascii_start());
    if let Ok(w) = serde_json::from_slice::<Wire<'_>>(data) {
        return Some((w, false));
    }
    let m: WireMinimal = serde_json::from_slice(data).ok()?;
    let w = Wire {
        request_id: m.request_id.map(Cow::Owned),
        usage: m.usage,
        error: m.error,
        code: m.code,
        ..Wire::default()
    };
    Some((w, true))
}

pub(super) fn error_code_of(error: &serde_json::Value) -> String {
    let pick = |k: &str| {
        error
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    pick("code")
        .or_else(|| pick("type"))
        .unwrap_or_else(|| "unknown".into())
}

/// Native streams send the string `"null"` until the last event.
pub(super) fn is_finished(reason: &str) -> bool {
    !reason.is_empty() && reason != "null"
}

/// The UTF-8 byte order mark some servers write before a body.
pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

pub(super) fn skip_bom(data: &[u8]) -> &[u8] {
    data.strip_prefix(BOM).unwrap_or(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> UsageRead {
        serde_json::from_str::<WireUsage>(json).unwrap().read()
    }

    #[test]
    fn integral_numbers_in_any_form_are_counts() {
        for json in [
            r#"{"input_tokens":11,"output_tokens":406}"#,
            r#"{"input_tokens":11.0,"output_tokens":4.06e2}"#,
            r#"{"input_tokens":1.1E1,"output_tokens":406.000}"#,
        ] {
            match read(json) {
                UsageRead::Read(t) => assert_eq!((t.input, t.output), (11, 406), "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_count_that_is_not_a_count_makes_the_usage_unreadable() {
        for json in [
            r#"{"input_tokens":11,"output_tokens":6.5}"#,
            r#"{"input_tokens":-1,"output_tokens":6}"#,
            r#"{"input_tokens":"11","output_tokens":6}"#,
            r#"{"input_tokens":11,"output_tokens":6,"output_tokens_details":{"reasoning_tokens":[1]}}"#,
            r#"{"input_tokens":11,"output_tokens":1e30}"#,
        ] {
            assert!(matches!(read(json), UsageRead::Unreadable), "{json}");
        }
        assert!(matches!(read(r#"{"total_tokens":3}"#), UsageRead::Absent));
        assert!(matches!(
            read(r#"{"input_tokens":null,"output_tokens":null}"#),
            UsageRead::Absent
        ));
    }

    #[test]
    fn a_bom_before_the_object_is_skipped() {
        let (w, partial) =
            parse_wire(b"\xEF\xBB\xBF{\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":140}}")
                .unwrap();
        assert!(!partial);
        assert!(matches!(w.usage.unwrap().read(), UsageRead::Read(t) if t.output == 140));
    }
}
