//! What the platform documents about each DeepSeek model besides its price: whether it thinks, and its limits.
//! One table, read by the budgets' worst case and by the simulator (prices live in the price book).
//!
//! Sources: `reference/bailian-2026.md` §1 and §3 (V4: thinking on by default, `max_tokens` up to 393,216 for
//! reasoning and answer together; v3.2: 65,536 and a thinking budget of 32,768), and the 2025 model table for
//! the older models. V4's context window on Bailian is UNCONFIRMED: the table takes DeepSeek's 1M, the larger
//! and therefore the safer bound for a budget's worst case. A model outside the table gets the largest of every
//! limit and is taken to think: a worst case may overstate, never understate.

/// Whether a model thinks, and who decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// Always (r1, the distills).
    Always,
    /// Unless the request switches it off (the V4 models).
    DefaultOn,
    /// Only when the request switches it on (v3.1, v3.2).
    DefaultOff,
    /// Never (v3).
    Never,
}

impl Thinking {
    /// Whether a call thinks, given the request's switch (`None`: the request said nothing).
    pub fn thinks(self, switch: Option<bool>) -> bool {
        match self {
            Thinking::Always => true,
            Thinking::Never => false,
            Thinking::DefaultOn => switch != Some(false),
            Thinking::DefaultOff => switch == Some(true),
        }
    }
}

/// A model's limits in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFacts {
    pub thinking: Thinking,
    pub max_input: u64,
    /// Largest chain of thought.
    pub max_reasoning: u64,
    /// Largest reply; when `output_cap_includes_reasoning`, the largest output of reasoning and reply together.
    pub max_answer: u64,
    /// The request's output limit (and the model's) bounds reasoning and reply together (V4), not the reply alone.
    pub output_cap_includes_reasoning: bool,
    /// The model has the explicit context cache (`cache_control` markers; cache writes billed apart). The
    /// others have only the implicit cache, which reads and never bills a write.
    pub explicit_cache: bool,
}

const V4: ModelFacts = ModelFacts {
    thinking: Thinking::DefaultOn,
    max_input: 1_048_576,
    max_reasoning: 393_216,
    max_answer: 393_216,
    output_cap_includes_reasoning: true,
    explicit_cache: false,
};

const HYBRID_V3: ModelFacts = ModelFacts {
    thinking: Thinking::DefaultOff,
    max_input: 98_304,
    max_reasoning: 32_768,
    max_answer: 65_536,
    output_cap_includes_reasoning: false,
    explicit_cache: false,
};

/// The facts of `model`. A provider prefix (`vanchin/`, `siliconflow/`) and a region suffix (`-us`) do not
/// change what the model is.
pub fn facts(model: &str) -> ModelFacts {
    let base = model.rsplit('/').next().unwrap_or(model);
    let base = base.strip_suffix("-us").unwrap_or(base);
    match base {
        // The only model with the explicit cache on the page (reference §2: "explicit + implicit").
        "deepseek-v4-pro" if !model.contains('/') => ModelFacts {
            explicit_cache: true,
            ..V4
        },
        b if b.starts_with("deepseek-v4") => V4,
        "deepseek-v3.2-think" => ModelFacts {
            thinking: Thinking::Always,
            ..HYBRID_V3
        },
        "deepseek-v3.2" | "deepseek-v3.2-exp" | "deepseek-v3.1" | "deepseek-v3.1-terminus" => {
            HYBRID_V3
        }
        "deepseek-r1" | "deepseek-r1-0528" => ModelFacts {
            thinking: Thinking::Always,
            max_answer: 16_384,
            ..HYBRID_V3
        },
        "deepseek-v3" | "deepseek-v3-0324" => ModelFacts {
            thinking: Thinking::Never,
            max_input: 57_344,
            max_reasoning: 0,
            max_answer: 8_192,
            output_cap_includes_reasoning: false,
            explicit_cache: false,
        },
        b if b.starts_with("deepseek-r1-distill-") => ModelFacts {
            thinking: Thinking::Always,
            max_input: 32_768,
            max_reasoning: 16_384,
            max_answer: 16_384,
            output_cap_includes_reasoning: false,
            explicit_cache: false,
        },
        // Outside the table: the largest of every limit, explicit cache included.
        _ => ModelFacts {
            explicit_cache: true,
            ..V4
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_and_regions_share_their_models_facts() {
        assert_eq!(facts("vanchin/deepseek-v4-pro"), V4);
        assert!(
            facts("deepseek-v4-pro").explicit_cache && !facts("deepseek-v4-flash").explicit_cache
        );
        assert_eq!(facts("deepseek-v4-flash-us"), V4);
        assert_eq!(
            facts("siliconflow/deepseek-r1-0528").thinking,
            Thinking::Always
        );
        assert_eq!(
            facts("vanchin/deepseek-v3.2-think").thinking,
            Thinking::Always
        );
        assert_eq!(
            facts("siliconflow/deepseek-v3-0324").thinking,
            Thinking::Never
        );
    }

    #[test]
    fn a_model_outside_the_table_gets_the_largest_of_every_limit() {
        let f = facts("mystery-model");
        assert_eq!(
            f,
            ModelFacts {
                explicit_cache: true,
                ..V4
            }
        );
        assert_eq!(f.thinking, Thinking::DefaultOn);
        for known in [
            "deepseek-v3",
            "deepseek-r1",
            "deepseek-v3.2",
            "deepseek-v4-flash",
        ] {
            let k = facts(known);
            assert!(
                k.max_input <= f.max_input && k.max_answer <= f.max_answer,
                "{known}"
            );
        }
    }

    #[test]
    fn who_decides_whether_a_call_thinks() {
        assert!(Thinking::DefaultOn.thinks(None) && !Thinking::DefaultOn.thinks(Some(false)));
        assert!(!Thinking::DefaultOff.thinks(None) && Thinking::DefaultOff.thinks(Some(true)));
        assert!(Thinking::Always.thinks(Some(false)) && !Thinking::Never.thinks(Some(true)));
    }
}
