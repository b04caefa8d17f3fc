# The seed tutorial's "simulated containers" section, as written there, plus its connectivity check.
# Run it with: cargo xtask lab run examples/seed-containers.sh
set -e
parent_interface="eth0"
ip link set "$parent_interface" up
# 开启混杂模式 (promiscuous mode on)
ip link set "$parent_interface" promisc on
ip link add link "$parent_interface" macvlan1 type macvlan mode bridge
ip link add link "$parent_interface" macvlan2 type macvlan mode bridge

ns1_ip="192.168.88.11"
ns2_ip="192.168.88.12"
ip netns add ns1
ip link set macvlan1 netns ns1
ip netns exec ns1 ip addr add "$ns1_ip"/24 dev macvlan1
ip netns exec ns1 ip link set dev macvlan1 up
ip netns add ns2
ip link set macvlan2 netns ns2
ip netns exec ns2 ip addr add "$ns2_ip"/24 dev macvlan2
ip netns exec ns2 ip link set dev macvlan2 up

ip -d link show dev eth0
ip netns exec ns2 ping -c 3 -W 2 "$ns1_ip"

# 清理环境 (cleanup)
ip netns delete ns1
ip netns delete ns2
ip -br link
