#!/usr/bin/env bash
# The performance harness (issue 5), one command: installs wrk if missing, starts Postgres if it is not
# running, then runs in release mode
#   1. cargo bench --bench proxy   direct vs floor proxy vs sidecar: W1–W5 (bench/proxy/main.rs)
#   2. cargo bench --bench ledger  ledger ingest capacity (journal → shipper → Postgres)
# and leaves bench/results/proxy.{json,md} and bench/results/ledger.json. About 8 minutes on 2 cores.
# BENCH_REPS (default 5) sets the alternations of the proxy bench; BENCH_ONLY=w1,open,w3,w4 runs some.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
cargo bench --locked --bench proxy
cargo bench --locked --bench ledger
