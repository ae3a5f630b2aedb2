#!/bin/sh
# The init of orch's vm sandbox (/init of its initramfs): runs one command
# and powers off. The host shares a control directory (9p tag orch-ctl)
# holding `shares` (lines "TAG PATH": 9p shares to mount at PATH), `net`
# (present when the command may use the network), `covers` (lines "NAME
# PATH": its file NAME bound over PATH) and `cmd` (the script that
# runs the command, chrooted into the disk); the command's stdout, stderr
# and exit status go back there as `stdout`, `stderr` and `status`.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done </lib/modules/order
fail() { echo "orch-vm-init: $*" >&2; poweroff -f; }
p9=trans=virtio,version=9p2000.L,msize=262144,cache=none
mount -t 9p -o "$p9" orch-ctl /ctl || fail "cannot mount the control share"
exec 2>/ctl/stderr
mount -t ext4 /dev/vda /newroot 2>/dev/null || mount -t ext4 /dev/vda1 /newroot ||
    fail "cannot mount the disk (/dev/vda or /dev/vda1) as ext4"
for d in proc sys dev tmp; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t tmpfs tmp /newroot/tmp
while read -r tag path; do
    mkdir -p "/newroot$path" && mount -t 9p -o "$p9" "$tag" "/newroot$path" ||
        fail "cannot mount the share $tag at $path"
done </ctl/shares
# Files of the control share bound over others (lines "NAME PATH"): the
# step's git file over the worktree's `.git`.
if [ -f /ctl/covers ]; then
    while read -r name path; do
        mount --bind "/ctl/$name" "/newroot$path" || fail "cannot cover $path"
    done </ctl/covers
fi
ip link set lo up
if [ -f /ctl/net ]; then
    # QEMU's user networking: fixed addresses, its DNS at 10.0.2.3.
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi
sh /ctl/cmd </dev/null >/ctl/stdout 2>/ctl/stderr
echo $? >/ctl/status
sync
poweroff -f
