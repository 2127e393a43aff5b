#!/bin/sh
# In-guest checks; prints "N passed, M failed" last.
pass=0; fail=0
check() { name=$1; shift; if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi; }
check "ublk-control exists" test -e /dev/ublk-control
echo "$pass passed, $fail failed"
