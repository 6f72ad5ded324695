//! Estimator error, and what the tokenizer costs.
//!
//! Run `bash bench/estimator/run.sh` (it produces the ground truth with the reference tokenizer in Python, then
//! runs this). Three measurements:
//!
//! 1. Against the platform's own counts (`bench/estimator/platform.json` and the mission document's stream):
//!    output = reasoning + answer text as the tap would book it; input = the request's messages through the
//!    chat template. The independent truth, and small.
//! 2. Cut streams and prose (`bench/results/estimator_cases.json`): the mission's thinking stream cut at 60
//!    points, and 240 cuts of the platform's DeepSeek page; each estimate is exactly what the tap books for a
//!    compat stream cut there (text + the completion overhead once anything streamed). The previous
//!    character-rate estimator is measured beside it.
//! 3. Cost: time and memory of the first load (decompress + parse), and CPU per estimate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use deepseek_meter::usage::estimate::{char_rate_tokens, Transcript, COMPLETION_OVERHEAD};
use deepseek_meter::usage::{estimate_prompt_tokens, tokenizer, Protocol};
use std::time::Instant;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn output_estimate(reasoning: &str, answer: &str) -> (u64, u64) {
    let (r, a) = (Transcript::of(reasoning), Transcript::of(answer));
    let overhead = if r.is_empty() && a.is_empty() {
        0
    } else {
        COMPLETION_OVERHEAD
    };
    (r.tokens() + a.tokens() + overhead, r.tokens())
}

/// What the tap books for a compat stream that streamed `reasoning` then `answer` (four characters a delta)
/// and was cut there by the client: the real path, from SSE bytes to the row's output tokens.
fn tap_output(reasoning: &str, answer: &str) -> u64 {
    use deepseek_meter::usage::tap::StreamEnd;
    use deepseek_meter::usage::{RequestInfo, ResponseTap};
    let mut tap = ResponseTap::new(
        Protocol::OpenAi,
        &RequestInfo::default(),
        200,
        Some("text/event-stream"),
        None,
    );
    for (field, text) in [("reasoning_content", reasoning), ("content", answer)] {
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(4) {
            let delta: String = piece.iter().collect();
            let event = serde_json::json!({"choices": [{"delta": {field: delta}, "index": 0}], "usage": null});
            tap.feed(format!("data: {event}\n\n").as_bytes());
        }
    }
    tap.finish(StreamEnd::ClientGone, || 0).tokens.output
}

fn old_output_estimate(reasoning: &str, answer: &str) -> u64 {
    let overhead = if reasoning.is_empty() && answer.is_empty() {
        0
    } else {
        COMPLETION_OVERHEAD
    };
    char_rate_tokens(reasoning) + char_rate_tokens(answer) + overhead
}

struct Errors(Vec<f64>, i64);

impl Errors {
    fn new() -> Self {
        Errors(Vec::new(), 0)
    }
    fn add(&mut self, est: u64, truth: u64) {
        let (e, t) = (est as i64, truth.max(1) as i64);
        self.1 += e - t;
        self.0.push((e - t).abs() as f64 / t as f64);
    }
    fn row(&mut self, label: &str) {
        let rel = &mut self.0;
        rel.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| rel[((rel.len() - 1) as f64 * p).round() as usize] * 100.0;
        let mean = rel.iter().sum::<f64>() / rel.len() as f64 * 100.0;
        println!(
            "| {label} | {} | {mean:.2} % | {:.2} % | {:.2} % | {:.2} % | {:+.2} |",
            rel.len(),
            q(0.5),
            q(0.9),
            q(1.0),
            self.1 as f64 / rel.len() as f64
        );
    }
}

fn main() {
    // 3a. Load: the first count pays it.
    let rss0 = rss_kib();
    let (wall0, cpu0) = (Instant::now(), cpu_seconds());
    assert!(tokenizer::get().is_some(), "embedded tokenizer loads");
    let load_wall = wall0.elapsed().as_secs_f64();
    let load_cpu = cpu_seconds() - cpu0;
    let load_rss = rss_kib().saturating_sub(rss0);

    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("bench/results/estimator_cases.json").expect(
            "run bench/estimator/run.sh: it writes bench/results/estimator_cases.json first",
        ),
    )
    .unwrap();
    let platform: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("bench/estimator/platform.json").unwrap())
            .unwrap();

    // 1. Against the platform's counts.
    println!("### Against the platform's reported counts\n");
    println!("| capture | platform | estimate | error | character-rate estimate (before) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mission = &cases["mission"];
    let mut out_err = Errors::new();
    let mut old_out_err = Errors::new();
    let mut output_rows: Vec<(String, &str, &str, u64)> = vec![(
        "deepseek-v3.2-exp thinking stream, output (mission doc)".into(),
        mission["reasoning"].as_str().unwrap(),
        mission["answer"].as_str().unwrap(),
        mission["platform_output"].as_u64().unwrap(),
    )];
    for c in platform["output"].as_array().unwrap() {
        output_rows.push((
            format!("{}, output", c["name"].as_str().unwrap()),
            c["reasoning"].as_str().unwrap(),
            c["answer"].as_str().unwrap(),
            c["platform_output"].as_u64().unwrap(),
        ));
    }
    for (name, r, a, truth) in &output_rows {
        let (est, _) = output_estimate(r, a);
        let old = old_output_estimate(r, a);
        out_err.add(est, *truth);
        old_out_err.add(old, *truth);
        let err = (est as f64 - *truth as f64) / *truth as f64 * 100.0;
        println!("| {name} | {truth} | {est} | {err:+.2} % | {old} |");
    }
    let (_, reasoning_est) = output_estimate(mission["reasoning"].as_str().unwrap(), "");
    let reasoning_truth = mission["platform_reasoning"].as_u64().unwrap();
    println!(
        "| deepseek-v3.2-exp thinking stream, reasoning only (mission doc) | {reasoning_truth} | {reasoning_est} | {:+.2} % | {} |",
        (reasoning_est as f64 - reasoning_truth as f64) / reasoning_truth as f64 * 100.0,
        char_rate_tokens(mission["reasoning"].as_str().unwrap())
    );
    let mut in_err = Errors::new();
    let mut old_in_err = Errors::new();
    for c in platform["input"].as_array().unwrap() {
        let body =
            serde_json::json!({"model": "deepseek-r1", "messages": c["messages"]}).to_string();
        let est = estimate_prompt_tokens(Protocol::OpenAi, body.as_bytes());
        let truth = c["platform_input"].as_u64().unwrap();
        let texts: Vec<&str> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        let old = texts.iter().map(|t| char_rate_tokens(t)).sum::<u64>() + 3 * texts.len() as u64;
        in_err.add(est, truth);
        old_in_err.add(old, truth);
        let err = (est as f64 - truth as f64) / truth as f64 * 100.0;
        println!(
            "| {}, input | {truth} | {est} | {err:+.2} % | {old} |",
            c["name"].as_str().unwrap()
        );
    }
    println!("\n| set | cases | mean abs error | p50 | p90 | max | bias (tokens per case) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    out_err.row("platform output, tokenizer");
    old_out_err.row("platform output, character rates (before)");
    in_err.row("platform input, tokenizer + template");
    old_in_err.row("platform input, character rates (before)");

    // 2. Cut streams and prose.
    println!(
        "\n### Cut streams and prose (truth: the reference tokenizer in Python + 5 hidden tokens; streams through the real tap)\n"
    );
    println!("| set | cases | mean abs error | p50 | p90 | max | bias (tokens per case) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for source in ["stream", "prose"] {
        let mut new = Errors::new();
        let mut old = Errors::new();
        for c in cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["source"] == source)
        {
            let (r, a) = (
                c["reasoning"].as_str().unwrap(),
                c["answer"].as_str().unwrap(),
            );
            let truth = c["true_output"].as_u64().unwrap();
            let (mut est, _) = if source == "stream" {
                (tap_output(r, a), 0)
            } else {
                output_estimate(r, a)
            };
            let mut old_est = old_output_estimate(r, a);
            if source == "prose" {
                // Prose cases measure the text count alone (no hidden tokens in their truth).
                est -= COMPLETION_OVERHEAD;
                old_est -= COMPLETION_OVERHEAD;
            }
            new.add(est, truth);
            old.add(old_est, truth);
        }
        new.row(&format!("{source}, tokenizer"));
        old.row(&format!("{source}, character rates (before)"));
    }

    // 3b. CPU per estimate, tokenizer loaded.
    println!("\n### Cost\n");
    println!("| what | figure |");
    println!("| --- | ---: |");
    println!(
        "| tokenizer load (first estimate only): wall | {:.0} ms |",
        load_wall * 1000.0
    );
    println!("| tokenizer load: CPU | {:.0} ms |", load_cpu * 1000.0);
    println!(
        "| tokenizer load: resident memory added | {:.0} MiB |",
        load_rss as f64 / 1024.0
    );
    println!(
        "| embedded size in the binary (zstd) | {:.2} MiB |",
        1_506_437f64 / 1024.0 / 1024.0
    );
    let reasoning = mission["reasoning"].as_str().unwrap();
    let answer = mission["answer"].as_str().unwrap();
    let long_text: String = platform["output"][0]["reasoning"]
        .as_str()
        .unwrap()
        .repeat(40);
    let per = |label: &str, f: &dyn Fn() -> u64| {
        let reps = 200;
        let start = Instant::now();
        let mut sink = 0;
        for _ in 0..reps {
            sink += f();
        }
        let us = start.elapsed().as_secs_f64() / reps as f64 * 1e6;
        println!("| CPU per estimate: {label} | {us:.0} µs |");
        std::hint::black_box(sink);
    };
    per(
        &format!(
            "cut stream, {} chars (mission stream)",
            reasoning.chars().count() + answer.chars().count()
        ),
        &|| output_estimate(reasoning, answer).0,
    );
    let mut capped = Transcript::new();
    let long_chars: Vec<char> = long_text.chars().collect();
    for piece in long_chars.chunks(4) {
        capped.add(&piece.iter().collect::<String>());
    }
    per(
        &format!(
            "long stream at the {} KiB per-channel bound ({} chars streamed)",
            deepseek_meter::usage::estimate::KEEP_BYTES / 1024,
            long_text.chars().count()
        ),
        &|| capped.tokens(),
    );
    let body = serde_json::json!({"model": "deepseek-r1", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": reasoning},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "请问 1+1 是多少？"}]})
    .to_string();
    per(
        &format!("prompt of a {}-byte request (4 messages)", body.len()),
        &|| estimate_prompt_tokens(Protocol::OpenAi, body.as_bytes()),
    );
    // 3c. Past the per-channel bound: about 100 KiB of the DeepSeek page's paragraphs (Chinese, English,
    // code; eight passes, each in another order) streamed four characters a delta, counted exactly vs kept
    // within the 32 KiB bound.
    let paragraphs: Vec<&str> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["source"] == "prose")
        .map(|c| c["answer"].as_str().unwrap())
        .collect();
    let mut page = String::new();
    for pass in 0..8 {
        for i in 0..paragraphs.len() {
            page.push_str(paragraphs[(i * (2 * pass + 1) + pass * 7) % paragraphs.len()]);
            page.push('\n');
        }
    }
    let mut exact = Transcript::with_limit(usize::MAX);
    let mut bounded = Transcript::new();
    let chars: Vec<char> = page.chars().collect();
    for piece in chars.chunks(4) {
        let delta: String = piece.iter().collect();
        exact.add(&delta);
        bounded.add(&delta);
    }
    let (e, b) = (exact.tokens() as f64, bounded.tokens() as f64);
    println!(
        "| past the bound: {} KiB of mixed text within the 32 KiB bound, exact {e} vs estimated {b} tokens | {:+.2} % |",
        page.len() / 1024,
        (b - e) / e * 100.0
    );
}
