#!/bin/sh
# Runs the upstream kernel selftest drivers/net/bonding/bond_macvlan_ipvlan.sh, unmodified, in a
# throwaway guest: the test and its sibling files (net/lib.sh, net/forwarding/lib.sh,
# bond_topo_2d1c.sh) come from Debian's linux-source-6.12 package, fetched and cached the way the
# kernels are; bash, tc and every kernel module are in the guest already; jq and GNU coreutils are
# added as packages. It prints 96 "[ OK ]" lines and exits 0 (4 would be a kselftest skip).
#
# Run it from the repository:  sh examples/bonding-selftest.sh [--kernel debian-6.12]
set -e
selftests=$(cargo xtask selftests)
exec cargo xtask lab run "$@" --dir "$selftests" --package jq,coreutils --memory 512 --timeout 600 \
    -- drivers/net/bonding/bond_macvlan_ipvlan.sh
