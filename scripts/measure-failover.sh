#!/usr/bin/env bash
# Measures failover as a client sees it, against a running `tandem dev`
# (default ports): for each trial, the time from `kill -9` of the active (or
# from starting `tandem admin failover`) to the first acknowledged submission
# through the CLI's failover client. The CLI's own start-up (~10-20 ms) is
# included. Usage: scripts/measure-failover.sh [kill|switchover] [trials]
set -euo pipefail
mode=${1:-kill}
trials=${2:-5}
cd "$(dirname "$0")/.."
bin=$(mktemp -d)/tandem
go build -o "$bin" ./cmd/tandem
now() { date +%s.%N; }
active() { "$bin" admin get-all-service-state | awk '$3=="active"{print $1; exit}'; }
for i in $(seq 1 "$trials"); do
  a=$(active)
  case $mode in
  kill)
    pid=$("$bin" admin servers -o json | python3 -c "import sys,json; print([s['pid'] for s in json.load(sys.stdin) if s['id']=='$a'][0])")
    start=$(now); kill -9 "$pid"
    "$bin" job submit -- echo after-kill >/dev/null
    end=$(now)
    printf 'trial %d: kill -9 %s (pid %s) -> first acknowledged submission: %.3f s\n' "$i" "$a" "$pid" "$(echo "$end - $start" | bc)"
    sleep 6 # tandem dev restarts the killed server after 3 s
    ;;
  switchover)
    b=$("$bin" admin get-all-service-state | awk '$3=="standby"{print $1; exit}')
    start=$(now); "$bin" admin failover "$a" "$b" >/dev/null
    "$bin" job submit -- echo after-switchover >/dev/null
    end=$(now)
    printf 'trial %d: failover %s -> %s -> first acknowledged submission: %.3f s\n' "$i" "$a" "$b" "$(echo "$end - $start" | bc)"
    sleep 1
    ;;
  *) echo "usage: $0 [kill|switchover] [trials]" >&2; exit 2 ;;
  esac
done
"$bin" admin history | tail -n "$((trials + 1))"
