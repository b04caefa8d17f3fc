#!/bin/sh
# What the action's own workflow runs in host1 of examples/vlan-trunk.toml: host2 answers over
# VLAN 10, no sooner than the delay its cable was given (50 ms each way) allows.
set -e
out=$(ping -c 10 -i 0.2 -W 2 10.0.10.2)
echo "$out"
avg=$(echo "$out" | sed -n 's|^rtt min/avg/max/mdev = [0-9.]*/\([0-9]*\).*|\1|p')
if [ "${avg:-0}" -lt 95 ]; then
  echo "average RTT ${avg:-?} ms: the cable's 50 ms each way is not there" >&2
  exit 1
fi
