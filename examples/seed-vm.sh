# The seed tutorial's "虚机使用macvlan" part by hand: a VM on a macvtap of eth0 in bridge mode, as
# `virt-install --network model=virtio,type=direct,source=eth0,source.mode=bridge` makes it.
# Run it with: cargo xtask lab run --nest --hosts 2 examples/seed-vm.sh
# (host1, which runs this, boots the nest image: QEMU, an inner kernel and image, KVM; host2 is .2)
set -e
ip link set eth0 promisc on

# libvirt's type=direct: a macvtap on eth0; the VM's NIC is its character device, opened as fd 3.
ip link add link eth0 name macvtap0 type macvtap mode bridge
ip link set macvtap0 up
mac=$(cat /sys/class/net/macvtap0/address)
idx=$(cat /sys/class/net/macvtap0/ifindex)
accel=tcg; [ -w /dev/kvm ] && accel=kvm   # KVM when this guest can nest (TCG's -cpu max has SVM)
/nest/bin/qemu-system-x86_64 -M microvm,pit=on,pic=on,rtc=on,isa-serial=on -accel $accel -m 128 \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel /nest/inner/vmlinuz -initrd /nest/inner/initrd.cpio \
  -append "console=ttyS0 rdinit=/init panic=-1 quiet lab.hostname=vm1 lab.eth0=192.168.88.21/24" \
  -serial file:/tmp/vm1.console \
  -device virtio-serial-device -chardev socket,id=agent,path=/tmp/vm1.sock,server=on,wait=off \
  -device virtserialport,chardev=agent,name=lab.agent \
  -netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=$mac \
  -pidfile /tmp/vm1.pid -daemonize 3<>/dev/tap$idx
echo "vm1 started with $accel on macvtap0 ($mac)"

# virsh domiflist
printf ' %-11s %-8s %-8s %-8s %s\n' Interface Type Source Model MAC macvtap0 direct eth0 virtio "$mac"

# The VM answers the LAN once it is up; ask it (through its agent) to ping host2.
ping_host2='{"id":1,"op":"run","program":{"script":"ping -c1 -W1 192.168.88.2"},"timeout":5000}'
start=$(date +%s)
until echo "$ping_host2" | /init call /tmp/vm1.sock 10 2>/dev/null | grep -q '"code":0'; do
  [ $(( $(date +%s) - start )) -lt 180 ] || { echo "vm1 did not come up; its console:"; cat /tmp/vm1.console; exit 1; }
  sleep 1
done
echo "vm1 -> host2: reachable ($(( $(date +%s) - start ))s after start)"

# 当使用macvlan时，宿主机无法和VM直接进行通讯: the host cannot reach its own VM...
if ping -c2 -W1 192.168.88.21 >/dev/null; then echo "host1 -> vm1: reachable"; else echo "host1 -> vm1: unreachable"; fi
# ...unless it talks through a macvlan of its own (the usual shim).
ip link add link eth0 name shim type macvlan mode bridge
ip addr add 192.168.88.100/32 dev shim && ip link set shim up && ip route add 192.168.88.21/32 dev shim
if ping -c2 -W1 192.168.88.21 >/dev/null; then echo "host1 -> vm1 via shim: reachable"; else echo "host1 -> vm1 via shim: unreachable"; fi

# 清理环境 (virsh destroy; the macvtap goes with the domain)
kill "$(cat /tmp/vm1.pid)"
ip link delete shim
ip link delete macvtap0
ip -br link
