//! Estimator error against DeepSeek's tokenizer, on streams cut at many points.
//!
//! Run `bash bench/estimator/run.sh` (it produces the ground truth with the real tokenizer, then runs this).
//! For each case the estimate is exactly what the tap books for a cut compat stream: the character-class
//! count of the reasoning and answer text that streamed, plus the completion overhead once anything streamed
//! (stream cases; prose cases measure the text model alone).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use deepseek_meter::usage::estimate::{TextTally, COMPLETION_OVERHEAD};

fn main() {
    let text = std::fs::read_to_string("bench/results/estimator_cases.json")
        .expect("run bench/estimator/run.sh: it writes bench/results/estimator_cases.json first");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    println!("| cases | source | mean abs error | p50 | p90 | max | bias (est − true, tokens) |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for source in ["stream", "prose"] {
        let mut rel = Vec::new();
        let mut bias = 0i64;
        for c in v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["source"] == source)
        {
            let r = TextTally::of(c["reasoning"].as_str().unwrap());
            let a = TextTally::of(c["answer"].as_str().unwrap());
            let overhead = if source == "stream" && !(r.is_empty() && a.is_empty()) {
                COMPLETION_OVERHEAD
            } else {
                0
            };
            let est = (r.tokens() + a.tokens() + overhead) as i64;
            let truth = c["true_output"].as_i64().unwrap().max(1);
            bias += est - truth;
            rel.push(((est - truth).abs() as f64) / truth as f64);
        }
        rel.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| rel[((rel.len() - 1) as f64 * p).round() as usize] * 100.0;
        let mean = rel.iter().sum::<f64>() / rel.len() as f64 * 100.0;
        println!(
            "| {} | {source} | {mean:.1} % | {:.1} % | {:.1} % | {:.1} % | {:+.2} per case |",
            rel.len(),
            q(0.5),
            q(0.9),
            q(1.0),
            bias as f64 / rel.len() as f64
        );
    }
}
