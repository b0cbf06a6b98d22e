#!/usr/bin/env bash
# Build the VM lab's guest image: a Debian 12 root file system from the Debian archive, turned
# into an ext4 file system (mke2fs -d: no loop mount) and a qcow2 base image, plus the kernel and
# initrd for direct kernel boot. rnet's binaries are NOT inside: guests mount them over virtio-9p.
#
# Usage: image.sh OUT_DIR MIRROR. Writes OUT_DIR/{base.qcow2,vmlinuz,initrd.img}. rnet runs this
# script embedded in its binary and keys the cache by its hash, so any edit here rebuilds.
set -euo pipefail

out=$1
mirror=$2
work=$out/work
rm -rf "$work"
mkdir -p "$work"
root=$work/root

# The guest boots without udev or systemd: pid 1 is tini running `rnet lab agent`, started by the
# small init below after it mounts the kernel file systems and the 9p share of rnet's binaries.
init_script='#!/bin/sh
# rnet VM lab guest init (baked into the image by rnet lab up --vm).
export PATH=/opt/rnet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
modprobe -a virtio_net virtio_console 9pnet_virtio 9p 2>/dev/null
mkdir -p /opt/rnet/bin
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose rnetbin /opt/rnet/bin
for arg in $(cat /proc/cmdline); do
    case $arg in rnet.host=*) hostname "${arg#rnet.host=}" ;; esac
done
exec /usr/bin/tini -s -- /opt/rnet/bin/rnet lab agent
'

modules='virtio_pci
virtio_blk
ext4
'

mmdebstrap --quiet --variant=minbase --components=main \
    --include=linux-image-amd64,initramfs-tools,kmod,tini,busybox,iproute2,iputils-ping,iperf3,tcpdump,etcd-server,etcd-client,procps,netcat-openbsd,libnftnl11 \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
    --setup-hook="printf 'MODULES=list\nCOMPRESS=gzip\n' > \"\$1/etc/initramfs-tools/conf.d/rnet-lab.conf\"" \
    --setup-hook="printf '%s' '$modules' > \"\$1/etc/initramfs-tools/modules\"" \
    --customize-hook="printf '%s' '$init_script' > \"\$1/sbin/rnet-init\" && chmod 0755 \"\$1/sbin/rnet-init\"" \
    --customize-hook='echo rnet-guest > "$1/etc/hostname"' \
    --customize-hook='printf "127.0.0.1 localhost\n" > "$1/etc/hosts"' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    bookworm "$root" "$mirror"

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
mke2fs -q -t ext4 -L rnet-root -d "$root" "$work/root.ext4" 2G
qemu-img convert -f raw -O qcow2 "$work/root.ext4" "$work/base.qcow2"
mv "$work/vmlinuz" "$work/initrd.img" "$work/base.qcow2" "$out/"
rm -rf "$work"
