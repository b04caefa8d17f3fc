#!/bin/sh
# A task stuck in uninterruptible sleep for over a second: the kernel's hung-task detector
# reports it ("INFO: task ... blocked for more than 1 seconds"), a real kernel splat.
set -e
modprobe loop
modprobe ext4 2>/dev/null || true
truncate -s 16M /tmp/disk
losetup /dev/loop0 /tmp/disk
mke2fs /dev/loop0 >/dev/null
mkdir -p /mnt/frozen
mount /dev/loop0 /mnt/frozen
echo 1 > /proc/sys/kernel/hung_task_timeout_secs
fsfreeze --freeze /mnt/frozen
(echo stuck > /mnt/frozen/file) &
sleep 4
fsfreeze --unfreeze /mnt/frozen
wait
echo done
