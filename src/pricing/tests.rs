use super::*;
use crate::usage::Tokens;
use proptest::prelude::*;
use std::str::FromStr;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn tokens(input: u64, cached: u64, cache_creation: u64, output: u64, reasoning: u64) -> Tokens {
    Tokens {
        input,
        cached,
        cache_creation,
        output,
        reasoning,
    }
}

#[test]
fn mission_example_costs_0_000428() {
    let book = PriceBook::builtin();
    let p = book
        .price_at("deepseek-v3.2-exp", at("2025-11-25T05:00:00Z"))
        .unwrap();
    assert_eq!(p.cost(&tokens(4, 0, 0, 140, 79)), d("0.000428"));
    assert_eq!(p.version(), "deepseek-v3.2-exp@2025-09-29");
    assert_eq!(p.period, None);
}

#[test]
fn billing_hour_is_the_clock_hour_in_the_billing_zone() {
    // 13:59:59.999 UTC is 21:59:59 in Shanghai: the hour starting 21:00 local = 13:00Z.
    let h = billing_hour(at("2026-11-25T13:59:59.999Z"), DEFAULT_TIMEZONE);
    assert_eq!(h, at("2026-11-25T13:00:00Z"));
    // A zone with a half-hour offset: 13:20Z is 18:50 in Kolkata → hour from 18:00 local = 12:30Z.
    let h = billing_hour(at("2026-11-25T13:20:00Z"), chrono_tz::Asia::Kolkata);
    assert_eq!(h, at("2026-11-25T12:30:00Z"));
}

#[test]
fn cached_tokens_use_the_cached_price() {
    let book = PriceBook::builtin();
    let p = book
        .price_at("deepseek-v3.1", at("2025-11-25T05:00:00Z"))
        .unwrap();
    // 3019 input of which 2048 cached, 104 output, no reasoning:
    // 971×4 + 2048×0.8 + 104×12 = 3884 + 1638.4 + 1248 = 6770.4 → 0.0067704
    assert_eq!(p.cost(&tokens(3019, 2048, 0, 104, 0)), d("0.0067704"));
}

#[test]
fn v4_pro_at_12_and_24_with_a_cache_write_at_its_write_price() {
    let book = PriceBook::builtin();
    let p = book
        .price_at("deepseek-v4-pro", at("2026-11-25T05:00:00Z"))
        .unwrap();
    // 10,000 input: 2,000 read from the cache, 5,000 written to it, 3,000 plain; 1,200 output of which 800
    // reasoning: 3000×12 + 2000×2.4 + 5000×15 + 800×24 + 400×24 = 36000 + 4800 + 75000 + 19200 + 9600
    // = 144,600 per million.
    let t = tokens(10_000, 2_000, 5_000, 1_200, 800);
    assert_eq!(p.cost(&t), d("0.1446"));
    assert_eq!(p.rates.input_cost(&t), d("0.1158"));
    let classes: Vec<_> = p.cost_by_class(&t).iter().map(|c| c.0).collect();
    assert_eq!(
        classes,
        [
            "input",
            "cached_input",
            "cache_creation_input",
            "reasoning",
            "answer"
        ]
    );
}

#[test]
fn reasoning_has_its_own_price_when_the_book_gives_one() {
    let text = "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = 2\nreasoning = 5\n";
    let book = PriceBook::parse(text, DEFAULT_TIMEZONE).unwrap();
    let p = book.price_at("m", at("2025-06-01T00:00:00Z")).unwrap();
    // 10 input × 1 + 30 reasoning × 5 + 20 answer × 2 = 200 per million.
    assert_eq!(p.cost(&tokens(10, 0, 0, 50, 30)), d("0.0002"));
}

#[test]
fn time_of_day_prices_follow_the_billing_hour() {
    let book = PriceBook::builtin();
    let t = tokens(1_000_000, 0, 0, 1_000_000, 0);
    // 2026-11-25 07:59:59 and 08:00:00 in Beijing.
    let off = book
        .price_at("deepseek-v4-flash-0731", at("2026-11-24T23:59:59Z"))
        .unwrap();
    let peak = book
        .price_at("deepseek-v4-flash-0731", at("2026-11-25T00:00:00Z"))
        .unwrap();
    assert_eq!((off.period, off.cost(&t)), (Some("off-peak"), d("6")));
    assert_eq!((peak.period, peak.cost(&t)), (Some("peak"), d("12")));
    // 21:59:59 is peak, 22:00 off-peak again.
    let last = book
        .price_at("deepseek-v4-flash-0731", at("2026-11-25T13:59:59Z"))
        .unwrap();
    assert_eq!(last.period, Some("peak"));
    let late = book
        .price_at("deepseek-v4-flash-0731", at("2026-11-25T14:00:00Z"))
        .unwrap();
    assert_eq!(late.period, Some("off-peak"));
    assert_eq!(peak.version(), "deepseek-v4-flash-0731@2026-08-17");
    // Before the notice's date there is no published price: unpriced.
    assert!(book
        .price_at("deepseek-v4-flash-0731", at("2026-08-15T00:00:00Z"))
        .is_none());
    // The stored version and period find the same rates again.
    let again = book.price_of(peak.version(), Some("peak")).unwrap();
    assert_eq!(again.rates, peak.rates);
    assert!(book.price_of(peak.version(), None).is_none());
}

#[test]
fn retirement_is_announced_not_a_price_change() {
    let book = PriceBook::builtin();
    // Midnight 2026-10-10 in Beijing.
    let after = at("2026-10-09T16:00:00Z");
    assert!(book.retired("deepseek-r1", after));
    assert!(!book.retired("deepseek-r1", at("2026-10-09T15:59:59Z")));
    // A later entry without `retires` lifts it.
    let lifted = PriceBook::with_file(
        "[[model]]\nname = \"deepseek-r1\"\neffective_from = 2026-11-01\ninput = 4\noutput = 16\n",
        DEFAULT_TIMEZONE,
    )
    .unwrap();
    assert!(!lifted.retired("deepseek-r1", at("2026-11-25T00:00:00Z")));
    assert!(book.retiring().any(|m| m == "deepseek-r1"));
    assert!(!lifted.retiring().any(|m| m == "deepseek-r1"));
    assert!(book.price_at("deepseek-r1", after).is_some());
    assert!(!book.retired("deepseek-v4-pro", after));
}

#[test]
fn effective_dates_pick_the_entry_in_force_in_the_billing_zone() {
    let text = r#"
[[model]]
name = "m"
effective_from = 2025-01-01
input = 1
output = 2
[[model]]
name = "m"
effective_from = 2025-06-01
input = "1.5"
output = 3
reasoning = 4
"#;
    let book = PriceBook::parse(text, DEFAULT_TIMEZONE).unwrap();
    // 2025-05-31T16:00Z is midnight June 1st in Shanghai.
    assert_eq!(
        book.price_at("m", at("2025-05-31T15:59:59Z"))
            .unwrap()
            .version(),
        "m@2025-01-01"
    );
    assert_eq!(
        book.price_at("m", at("2025-05-31T16:00:00Z"))
            .unwrap()
            .version(),
        "m@2025-06-01"
    );
    assert!(book.price_at("m", at("2024-12-31T00:00:00Z")).is_none());
    assert!(book.price_at("nope", at("2025-06-01T00:00:00Z")).is_none());
    assert_eq!(book.model_label("nope"), "other");
    let p = book.price_at("m", at("2025-07-01T00:00:00Z")).unwrap();
    assert_eq!(p.rates.reasoning, Decimal::from(4));
    // No ratio in the file: cache reads and writes at the input price.
    assert_eq!(p.rates.cached_input, d("1.5"));
    assert_eq!(p.rates.cache_write, d("1.5"));
}

#[test]
fn a_prices_file_adds_to_and_overrides_the_builtin_book() {
    let file = r#"
default_cache_write_ratio = "1.5"
[[model]]
name = "deepseek-v4-pro"
effective_from = 2026-01-01
input = "10"
output = "20"
cache_write = "11"
[[model]]
name = "deepseek-v4-pro-us"
effective_from = 2026-01-01
input = "100"
output = "200"
"#;
    let book = PriceBook::with_file(file, DEFAULT_TIMEZONE).unwrap();
    let now = at("2026-11-25T05:00:00Z");
    let pro = book.price_at("deepseek-v4-pro", now).unwrap();
    assert_eq!((pro.rates.input, pro.rates.cache_write), (d("10"), d("11")));
    // Replaced, not added: the stored version finds the file's rates, and there is one entry of that date.
    let stored = book.price_of("deepseek-v4-pro@2026-01-01", None).unwrap();
    assert_eq!(stored.rates.input, d("10"));
    assert_eq!(
        book.entries()
            .filter(|e| e.version() == "deepseek-v4-pro@2026-01-01")
            .count(),
        1
    );
    // The built-in cache-read ratio (0.2), the file's own write ratio (1.5).
    let us = book.price_at("deepseek-v4-pro-us", now).unwrap();
    assert_eq!(
        (us.rates.cached_input, us.rates.cache_write),
        (d("20"), d("150"))
    );
    // The rest of the built-in book is still there.
    assert!(book.price_at("deepseek-v4-flash", now).is_some());
    let alone =
        PriceBook::with_file(&format!("replace_builtin = true\n{file}"), DEFAULT_TIMEZONE).unwrap();
    assert!(alone.price_at("deepseek-v4-flash", now).is_none());
}

#[test]
fn invalid_books_name_the_entry() {
    let problem = |text: &str| {
        PriceBook::parse(text, DEFAULT_TIMEZONE)
            .unwrap_err()
            .to_string()
    };
    let neg = "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = \"-1\"\noutput = 1\n";
    assert_eq!(
        problem(neg),
        "invalid price book entry m@2025-01-01: input price -1 is negative"
    );
    let huge =
        "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = \"1000000.01\"\n";
    assert_eq!(
        problem(huge),
        "invalid price book entry m@2025-01-01: output price 1000000.01 is above 1000000 CNY per million tokens"
    );
    let unknown =
        "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = 1\nfoo = 1\n";
    assert!(problem(unknown).contains("foo"), "{}", problem(unknown));
    let dup = "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = 1\n\
               [[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 2\noutput = 2\n";
    let e = problem(dup);
    assert!(e.contains("m@2025-01-01") && e.contains("overlap"), "{e}");
    assert!(PriceBook::parse("currency = \"USD\"\n", DEFAULT_TIMEZONE).is_err());
    let head = "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\n";
    let period = |name: &str, hours: &str| {
        format!("[[model.period]]\nname = \"{name}\"\nhours = \"{hours}\"\ninput = 1\noutput = 1\n")
    };
    let gap = format!("{head}{}{}", period("a", "08-22"), period("b", "23-08"));
    assert_eq!(
        problem(&gap),
        "invalid price book entry m@2025-01-01: no period covers 22:00"
    );
    let overlap = format!("{head}{}{}", period("a", "08-22"), period("b", "21-08"));
    assert!(problem(&overlap).contains("overlap at 21:00"));
    let both = format!("{head}input = 1\noutput = 1\n{}", period("a", "00-24"));
    assert!(problem(&both).contains("either on the entry or in its periods"));
    let bad_hours = format!("{head}{}", period("a", "8am-10pm"));
    assert!(problem(&bad_hours).contains("\"8am-10pm\""));
    let unknown_assumed = format!("{head}input = 1\noutput = 1\nassumed = [\"colour\"]\n");
    assert!(problem(&unknown_assumed).contains("\"colour\""));
    let unknown_in_period = format!("{head}{}extra = 1\n", period("a", "08-22"));
    assert!(problem(&unknown_in_period).contains("extra"));
}

#[test]
fn builtin_book_covers_every_reference_model() {
    let book = PriceBook::builtin();
    let now = at("2026-11-25T00:00:00Z");
    for m in [
        "deepseek-v4-pro",
        "deepseek-v4-pro-0813",
        "deepseek-v4-flash",
        "deepseek-v4-flash-0731",
        "deepseek-v4.1-flash",
        "deepseek-v3.2",
        "deepseek-v3.2-exp",
        "deepseek-v3.1",
        "deepseek-r1",
        "deepseek-r1-0528",
        "deepseek-v3",
        "deepseek-r1-distill-qwen-1.5b",
        "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
        "deepseek-r1-distill-llama-8b",
        "deepseek-r1-distill-llama-70b",
        "vanchin/deepseek-v4-pro",
        "vanchin/deepseek-v4-pro-0813",
        "vanchin/deepseek-v3.2-think",
        "vanchin/deepseek-v3.1-terminus",
        "vanchin/deepseek-r1",
        "vanchin/deepseek-v3",
        "siliconflow/deepseek-v3.2",
        "siliconflow/deepseek-v3.1-terminus",
        "siliconflow/deepseek-r1-0528",
        "siliconflow/deepseek-v3-0324",
    ] {
        assert!(book.price_at(m, now).is_some(), "{m}");
    }
    // Every entry says where its figures come from.
    assert!(book.entries().all(|e| e.source.is_some()));
}

#[test]
fn the_prices_table_marks_assumptions_and_names_sources() {
    let table = PriceBook::builtin().render_table();
    let line = |prefix: &str| {
        table
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // deepseek-v4-pro: input and output published, cache prices and the date assumed.
    assert_eq!(
        line("deepseek-v4-pro ")[..8],
        [
            "deepseek-v4-pro",
            "2026-01-01*",
            "all",
            "day",
            "12",
            "2.4*",
            "15*",
            "24"
        ]
    );
    assert_eq!(
        line("deepseek-v4-flash-0731 ")[..6],
        [
            "deepseek-v4-flash-0731",
            "2026-08-17",
            "peak",
            "3",
            "0.6*",
            "3.75*"
        ]
    );
    assert_eq!(line("deepseek-v4.1-flash ")[4], "1*");
    assert_eq!(line("deepseek-r1 ")[9], "2026-10-10");
    assert!(table.contains("deepseek-v4-flash-0731@2026-08-17: notice 118555"));
    assert!(table.contains("* an assumption"));
}

fn arb_tokens() -> impl Strategy<Value = Tokens> {
    (
        0u64..10_000_000,
        0u64..10_000_000,
        0u64..10_000_000,
        0u64..10_000_000,
        0u64..10_000_000,
    )
        .prop_map(|(i, c, w, o, r)| tokens(i, c, w, o, r).clamp().0)
}

proptest! {
    #[test]
    fn cost_of_a_sum_is_the_sum_of_costs(a in arb_tokens(), b in arb_tokens(), price in 0usize..40) {
        let book = PriceBook::builtin();
        let prices: Vec<Price<'_>> = book.entries().flat_map(Entry::prices).collect();
        let p = prices[price % prices.len()];
        let sum = Tokens {
            input: a.input + b.input,
            cached: a.cached + b.cached,
            cache_creation: a.cache_creation + b.cache_creation,
            output: a.output + b.output,
            reasoning: a.reasoning + b.reasoning,
        };
        prop_assert_eq!(p.cost(&a) + p.cost(&b), p.cost(&sum));
        prop_assert!(!p.cost(&a).is_sign_negative() || p.cost(&a).is_zero());
    }
}
