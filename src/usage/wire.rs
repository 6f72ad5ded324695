//! The wire shapes as the tap reads them: one permissive type for every JSON object of the chat and native
//! protocols (compat chunk or body, native event or body, error), and the usage object of all four protocols
//! ([`WireUsage`]), unknown fields ignored.

use serde::Deserialize;
use std::borrow::Cow;

/// A usage object's counts, as the protocol wrote them (`None`: not in this object). `input` is the protocol's
/// own input field: every input token in the OpenAI and native shapes, the uncached rest in Anthropic's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct WireTokens {
    pub(super) input: Option<u64>,
    pub(super) cached: Option<u64>,
    pub(super) cache_creation: Option<u64>,
    pub(super) output: Option<u64>,
    pub(super) reasoning: Option<u64>,
}

impl WireTokens {
    /// `newer` over `self`: what the newer object says wins, what it leaves out stays (Anthropic's
    /// `message_start` has the input, its `message_delta` the output; a native stream repeats everything).
    pub(super) fn merge(self, newer: WireTokens) -> WireTokens {
        WireTokens {
            input: newer.input.or(self.input),
            cached: newer.cached.or(self.cached),
            cache_creation: newer.cache_creation.or(self.cache_creation),
            output: newer.output.or(self.output),
            reasoning: newer.reasoning.or(self.reasoning),
        }
    }
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

/// The usage object of every protocol: chat (`prompt_tokens`, `completion_tokens`, `*_details`), native and
/// Responses (`input_tokens`, `output_tokens`, `input_tokens_details`, `x_details`), Anthropic
/// (`cache_read_input_tokens`, `cache_creation_input_tokens`).
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
    #[serde(default)]
    pub(super) input_tokens_details: Option<PromptDetails>,
    /// Responses: per billing type, where cache writes may be reported.
    #[serde(default)]
    pub(super) x_details: Option<XDetails>,
    #[serde(default)]
    pub(super) cache_read_input_tokens: Option<Count>,
    #[serde(default)]
    pub(super) cache_creation_input_tokens: Option<Count>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct OutputDetails {
    #[serde(default)]
    pub(super) reasoning_tokens: Option<Count>,
}

#[derive(Deserialize, Clone, Copy, Default)]
pub(super) struct PromptDetails {
    #[serde(default)]
    pub(super) cached_tokens: Option<Count>,
    #[serde(default)]
    pub(super) cache_creation_input_tokens: Option<Count>,
    /// `{"ephemeral_5m_input_tokens": N}`: the same writes by lifetime.
    #[serde(default)]
    pub(super) cache_creation: Option<CacheCreation>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct CacheCreation {
    #[serde(default)]
    pub(super) ephemeral_5m_input_tokens: Option<Count>,
}

impl PromptDetails {
    fn cache_creation(&self) -> Option<Count> {
        self.cache_creation_input_tokens.or(self
            .cache_creation
            .and_then(|c| c.ephemeral_5m_input_tokens))
    }
}

/// The cache writes of a Responses `x_details` array, summed over its entries (read without allocating).
#[derive(Clone, Copy, Default)]
pub(super) struct XDetails {
    cache_creation: Option<Count>,
}

impl<'de> Deserialize<'de> for XDetails {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(default)]
            prompt_tokens_details: Option<PromptDetails>,
            #[serde(default)]
            cache_creation_input_tokens: Option<Count>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = XDetails;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of usage details")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<XDetails, A::Error> {
                let mut sum: Option<Count> = None;
                while let Some(e) = a.next_element::<Entry>()? {
                    let n = e
                        .cache_creation_input_tokens
                        .or(e.prompt_tokens_details.and_then(|p| p.cache_creation()));
                    sum = match (sum, n) {
                        (s, None) => s,
                        (None, n) => n,
                        (Some(Count::Valid(a)), Some(Count::Valid(b))) => {
                            Some(a.checked_add(b).map_or(Count::Invalid, Count::Valid))
                        }
                        _ => Some(Count::Invalid),
                    };
                }
                Ok(XDetails {
                    cache_creation: sum,
                })
            }
            fn visit_unit<E>(self) -> Result<XDetails, E> {
                Ok(XDetails::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// A string field that may hold anything: a JSON string is kept (borrowed where it has no escapes), any other
/// value is read past and gives `None`, so one odd field never makes a whole event unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Text<'a>(pub(super) Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub(super) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_unit<E>(self) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_none<E>(self) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Text<'a>, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Text<'a>, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// What can be read of a JSON object that did not parse as its protocol's type.
pub(super) struct Salvaged {
    /// Its `type` (the event's name in the Responses and Anthropic protocols).
    pub(super) kind: Option<String>,
    pub(super) usage: Option<WireUsage>,
    pub(super) error: Option<serde_json::Value>,
}

/// A last look, through a generic JSON value, at where the protocols keep usage (`usage`, `response.usage`,
/// `message.usage`) and errors (`error`, `response.error`). `None`: not JSON at all.
pub(super) fn salvage(data: &[u8]) -> Option<Salvaged> {
    let v: serde_json::Value = serde_json::from_slice(skip_bom(data.trim_ascii_start())).ok()?;
    let usage = ["/usage", "/response/usage", "/message/usage"]
        .iter()
        .filter_map(|p| v.pointer(p))
        .find_map(|u| WireUsage::deserialize(u).ok());
    let error = ["/error", "/response/error"]
        .iter()
        .filter_map(|p| v.pointer(p))
        .find(|e| e.is_object())
        .cloned();
    let kind = v.get("type").and_then(|t| t.as_str()).map(str::to_owned);
    Some(Salvaged { kind, usage, error })
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
        let prompt = self.prompt_tokens_details.or(self.input_tokens_details);
        let fields = [
            self.prompt_tokens.or(self.input_tokens),
            self.cache_read_input_tokens
                .or(prompt.and_then(|d| d.cached_tokens)),
            self.cache_creation_input_tokens
                .or(prompt.and_then(|d| d.cache_creation()))
                .or(self.x_details.and_then(|x| x.cache_creation)),
            self.completion_tokens.or(self.output_tokens),
            details.and_then(|d| d.reasoning_tokens),
        ];
        if fields.contains(&Some(Count::Invalid)) {
            return UsageRead::Unreadable;
        }
        let value = |c: Option<Count>| match c {
            Some(Count::Valid(v)) => Some(v),
            _ => None,
        };
        let [input, cached, cache_creation, output, reasoning] = fields.map(value);
        if input.is_none() && output.is_none() {
            return UsageRead::Absent;
        }
        UsageRead::Read(WireTokens {
            input,
            cached,
            cache_creation,
            output,
            reasoning,
        })
    }
}

/// Parses one JSON object of the chat or native protocol. When the full shape does not parse (a field of an unexpected
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
                UsageRead::Read(t) => {
                    assert_eq!((t.input, t.output), (Some(11), Some(406)), "{json}")
                }
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
        assert!(matches!(w.usage.unwrap().read(), UsageRead::Read(t) if t.output == Some(140)));
    }

    #[test]
    fn cache_reads_and_writes_in_every_shape() {
        let shapes = [
            // Chat and native (reference bailian-2026 §4): both under prompt_tokens_details.
            r#"{"prompt_tokens":3000,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":1024,"cache_creation_input_tokens":1500,"cache_type":"ephemeral","cache_creation":{"ephemeral_5m_input_tokens":1500}}}"#,
            // The same writes given only by lifetime.
            r#"{"input_tokens":3000,"output_tokens":10,"prompt_tokens_details":{"cached_tokens":1024,"cache_creation":{"ephemeral_5m_input_tokens":1500}}}"#,
            // Responses: reads in input_tokens_details, writes in x_details.
            r#"{"input_tokens":3000,"input_tokens_details":{"cached_tokens":1024},"output_tokens":10,"x_details":[{"input_tokens":3000,"prompt_tokens_details":{"cache_creation_input_tokens":1500},"x_billing_type":"response_api"}]}"#,
            // Anthropic: at the top level.
            r#"{"input_tokens":3000,"output_tokens":10,"cache_read_input_tokens":1024,"cache_creation_input_tokens":1500}"#,
        ];
        for json in shapes {
            match read(json) {
                UsageRead::Read(t) => assert_eq!(
                    (t.input, t.cached, t.cache_creation, t.output),
                    (Some(3000), Some(1024), Some(1500), Some(10)),
                    "{json}"
                ),
                other => panic!("{json}: {other:?}"),
            }
        }
        // Several billing types: their writes add up.
        let two = r#"{"input_tokens":3000,"output_tokens":1,"x_details":[{"prompt_tokens_details":{"cache_creation_input_tokens":1000}},{"x_billing_type":"x"},{"cache_creation_input_tokens":500}]}"#;
        assert!(matches!(read(two), UsageRead::Read(t) if t.cache_creation == Some(1500)));
        let bad = r#"{"input_tokens":3,"output_tokens":1,"x_details":[{"cache_creation_input_tokens":-1}]}"#;
        assert!(matches!(read(bad), UsageRead::Unreadable));
        let null = r#"{"input_tokens":3,"output_tokens":1,"x_details":null}"#;
        assert!(matches!(read(null), UsageRead::Read(t) if t.cache_creation.is_none()));
    }
}
