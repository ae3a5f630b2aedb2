#!/usr/bin/env bash
# Builds what the `vm` sandbox boots, cached in a directory ($1, default
# ~/.cache/orch/vm): a Debian kernel (uncompressed), an initramfs (static
# busybox, the kernel modules for virtio disks, 9p shares and virtio networking, and the
# init that runs one command), and a base disk image (qcow2 holding ext4 with
# busybox as /bin/sh and a marker file /orch-base). Prints the three paths as
# ORCH_VM_KERNEL=..., ORCH_VM_INITRD=..., ORCH_VM_IMAGE=... lines. Needs
# apt-get (to download the kernel package), busybox-static, cpio, e2fsprogs,
# xz-utils and qemu-utils; .ci/run installs them. Does nothing when the
# files are there. ORCH_VM_KERNEL_PKG names another kernel package (one whose
# modules are not compressed, with the kernel xz-compressed).
set -euo pipefail

dir=${1:-$HOME/.cache/orch/vm}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
kernel=$dir/vmlinux initrd=$dir/initrd.img image=$dir/base.qcow2
# Rebuilt when the init changes.
stamp=$dir/init.sha256

want_init=$(sha256sum "$here/vm-init.sh" | cut -d' ' -f1)
if [ ! -f "$kernel" ] || [ ! -f "$initrd" ] || [ ! -f "$image" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want_init" ]; then
    # The generic kernel (the cloud one has no 9p), the version Debian's
    # metapackage currently names: older ones leave the mirror.
    kpkg=${ORCH_VM_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')}
    [ -n "$kpkg" ] || { echo "vm-assets: apt-cache names no kernel for linux-image-amd64 (run apt-get update)" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1) || {
        echo "vm-assets: apt-get download $kpkg failed (is $kpkg in the apt lists? run apt-get update)" >&2
        exit 1
    }
    dpkg -x "$work"/"$kpkg"_*.deb "$work/pkg"
    ver=${kpkg#linux-image-}
    # The uncompressed kernel (booted through its PVH entry): software
    # emulation spends about 6 s decompressing the packaged bzImage.
    bz=$work/pkg/boot/vmlinuz-$ver
    off=$(grep -abo $'\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
    [ -n "$off" ] || { echo "vm-assets: no xz payload in $bz" >&2; exit 1; }
    # xz complains about the bytes after the payload; the kernel is whole.
    tail -c +$((off + 1)) "$bz" | xz -dc >"$kernel.tmp" 2>/dev/null || true
    head -c 4 "$kernel.tmp" | grep -q ELF || { echo "vm-assets: no ELF kernel in $bz" >&2; exit 1; }
    mods=$work/pkg/lib/modules/$ver/kernel

    root=$work/initramfs
    mkdir -p "$root"/{bin,dev,proc,sys,ctl,newroot,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for a in $("$root/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
    done
    # Modules in load order: each after what it depends on (read from the
    # module's own .modinfo; the package ships no modules.dep).
    order=()
    add() {
        local name=${1//-/_} f dep
        for m in "${order[@]}"; do [ "$m" = "$name" ] && return 0; done
        f=$(find "$mods" -name "$name.ko" -o -name "${1//_/-}.ko" | head -n1)
        [ -n "$f" ] || { echo "vm-assets: no module $name in $kpkg" >&2; exit 1; }
        for dep in $(grep -a -o 'depends=[A-Za-z0-9_,-]*' "$f" | head -n1 | cut -d= -f2 | tr , ' '); do
            add "$dep"
        done
        cp "$f" "$root/lib/modules/$name.ko"
        order+=("$name")
    }
    for m in virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p virtio_net; do add "$m"; done
    printf '%s\n' "${order[@]}" >"$root/lib/modules/order"
    install -m 755 "$here/vm-init.sh" "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"

    base=$work/base
    mkdir -p "$base"/{bin,tmp,proc,sys,dev}
    cp /bin/busybox "$base/bin/busybox"
    ln -s busybox "$base/bin/sh"
    for a in $("$base/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$base/bin/$a"
    done
    echo "the base image of orch's vm sandbox" >"$base/orch-base"
    mkfs.ext4 -q -F -d "$base" "$work/base.ext4" 256M >&2
    qemu-img convert -q -f raw -O qcow2 "$work/base.ext4" "$image.tmp"

    mv "$kernel.tmp" "$kernel"
    mv "$initrd.tmp" "$initrd"
    mv "$image.tmp" "$image"
    echo "$want_init" >"$stamp"
fi
echo "ORCH_VM_KERNEL=$kernel"
echo "ORCH_VM_INITRD=$initrd"
echo "ORCH_VM_IMAGE=$image"
