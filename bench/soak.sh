#!/usr/bin/env bash
# The fault suite at soak scale (issue 4): the same tests CI runs short, with METER_SOAK=1 —
# a 60 s Postgres outage under steady load, SIGTERM with 500 open streams, 50 SIGKILLs under load (batched
# and strict), 5,000 slow clients, disk full, every upstream fault. One scenario at a time; each prints a
# RESULT line with its figures (also in bench/results/soak.log). Needs Postgres on 127.0.0.1:5432 and root
# (the disk-full scenarios mount a small tmpfs). About 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
mkdir -p bench/results
METER_SOAK=1 cargo nextest run --locked --release --profile soak --test it -E 'test(/^(faults|durability)::/)' \
  --no-fail-fast --test-threads 1 --success-output immediate 2>&1 | tee bench/results/soak.log | grep -E "RESULT|PASS|FAIL|Summary"
