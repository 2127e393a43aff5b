#!/usr/bin/env bash
# A bounded soak of everything at once (tests/torture.rs): a hybrid-
# replicated primary whose data dir is on powerfs (tests/common/powerfs.rs)
# under fio and a tracking writer, with a dependent shadow, cycling through
# kill -9 plus power cuts of the primary, kill -9 of the secondary, link
# faults through the fault proxy, new points in time, restores of the
# master, cache toggles and fio write-and-verify passes, checking after each
# cycle that no flushed write is lost, the shadow keeps its point in time
# and the two sides converge. It prints what it did and found:
#
#   torture: 312 cycles in 1200 s (41 power cuts, ...): 0 lost, 0 corrupt, 0 divergent
#
#   tools/torture.sh [MINUTES]        # default 20; needs root (FUSE mount) and fio
#   UMBRA_TORTURE_SEED=N tools/torture.sh 5   # repeat one run's choices
#
# CI runs the same test for 45 s as a smoke run; this is the long one.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-20}"
[[ "$minutes" =~ ^[0-9]+$ ]] || { echo "usage: tools/torture.sh [MINUTES]" >&2; exit 2; }
tools/test --deps
export UMBRA_TORTURE_SECS=$((minutes * 60))
export UMBRA_TORTURE_SEED="${UMBRA_TORTURE_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
log="$(mktemp -t umbra-torture.XXXXXX.log)"
echo "torture: ${minutes} min; cycle log in $log"
if cargo test --release --test torture -- --nocapture 2>"$log" | tee -a "$log" | grep '^torture:'; then
  echo "torture: passed"
else
  grep -E 'torture|cycle .*(differ|lost|left|not the)|panicked' "$log" | tail -20 >&2
  echo "torture: FAILED (log $log)" >&2
  exit 1
fi
