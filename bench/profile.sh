#!/usr/bin/env bash
# Where the sidecar's CPU goes under W2 (issue 25): the release sidecar on the bench's mock upstream, ledger on
# (a fresh Postgres database), wrk with 32 connections. Writes to bench/results/:
#   profile-w2.svg     flame graph (perf, DWARF call graphs, 5 s at 999 Hz; inferno)
#   profile-w2.txt     inclusive share of the sidecar's own functions, and the syscalls per call (strace -c)
# Needs perf (apt-get install linux-perf), strace, wrk, inferno (cargo install inferno); installs the last
# three if missing. BENCH_SIDECAR_BIN profiles another build (an older commit's release binary);
# BENCH_SIDECAR_ARGS adds `serve` flags (e.g. --database-url postgres://127.0.0.1:1/x for "database away").
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null && command -v strace >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq wrk strace; }
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
cargo build --locked --release --bench proxy --bin deepseek-meter
bench_bin=$(ls -t target/release/deps/proxy-* | grep -v '\.d$' | head -1)
sidecar_bin=${BENCH_SIDECAR_BIN:-target/release/deepseek-meter}
out=bench/results
work=$(mktemp -d)
db="dm_bench_profile_$$"
mkdir -p "$out"

# The mock upstream: a role of the proxy bench, on an ephemeral port; it exits when its stdin closes.
mkfifo "$work/in"
sleep 100000 > "$work/in" &
holder=$!
"$bench_bin" mock < "$work/in" > "$work/mock.addr" &
for _ in $(seq 1 50); do [ -s "$work/mock.addr" ] && break; sleep 0.1; done
mock=$(head -1 "$work/mock.addr")
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086
"$sidecar_bin" serve --upstream "http://$mock" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  --database-url "postgres://postgres@127.0.0.1:5432/$db" --journal-dir "$work/journal" \
  ${BENCH_SIDECAR_ARGS:-} 2> "$work/sidecar.log" &
sidecar=$!
cleanup() {
  kill "$sidecar" 2>/dev/null || true
  sleep 1
  kill "$holder" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$admin") 2>/dev/null && break; sleep 0.1; done

cat > "$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"你是谁"}],"enable_thinking":true}'
wrk.headers["Content-Type"] = "application/json"
EOF
url="http://127.0.0.1:$port/compatible-mode/v1/chat/completions"
load() { wrk -t2 -c32 -d"$1"s -s "$work/post.lua" "$url"; }
load 3 > /dev/null   # warm up: connection pools, the first ledger batches

ticks() { awk '{print $14 + $15}' "/proc/$sidecar/stat"; }
c0=$(ticks)
calls=$(load 5 | awk '/requests in/ {print $1}')
c1=$(ticks)
hz=$(getconf CLK_TCK)
cpu_us=$(python3 -c "print(round(($c1 - $c0) * 1e6 / $hz / $calls, 1))")

load 12 > /dev/null &
loader=$!
sleep 2
perf record -F 999 --call-graph dwarf,32768 -p "$sidecar" -o "$work/perf.data" -- sleep 5 2> /dev/null
wait "$loader"
perf script -i "$work/perf.data" 2> /dev/null | inferno-collapse-perf > "$work/folded"
inferno-flamegraph --minwidth 0.2 --title "deepseek-meter serve under W2 (wrk 32 connections), ledger on" \
  < "$work/folded" > "$out/profile-w2.svg"

timeout 9 strace -f -c -p "$sidecar" -o "$work/strace" 2> /dev/null &
tracer=$!
sleep 1
strace_calls=$(load 4 | awk '/requests in/ {print $1}')
wait "$tracer" || true

{
  echo "W2: $calls calls in 5 s, sidecar CPU per call $cpu_us us"
  echo
  echo "Inclusive share of the sidecar's samples (perf, DWARF call graphs):"
  python3 - "$work/folded" <<'EOF'
import collections, re, sys
total, inclusive = 0, collections.Counter()
name = re.compile(r"deepseek_meter::[A-Za-z_:]+")
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    seen = {re.sub(r"::\{\{closure\}\}.*|::_::.*", "", m.group(0))
            for f in stack.split(";") for m in [name.search(f)] if m}
    for k in seen:
        inclusive[k] += n
for k, v in inclusive.most_common(30):
    print(f"  {100 * v / total:5.1f}%  {k}")
EOF
  echo
  echo "Syscalls per call (strace -c over $strace_calls calls; strace itself slows the run):"
  awk -v n="$strace_calls" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
      printf "  %-16s %6.2f\n", $NF, $4 / n }' "$work/strace" | sort -k2 -nr | head -8
} | tee "$out/profile-w2.txt"
