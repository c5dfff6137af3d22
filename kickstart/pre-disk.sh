# Choose the target disk(s) and write the partitioning to /tmp/voxnode-part.ks.
# Never the install medium, never a USB / removable / read-only device; NVMe disks are
# ordinary candidates. One candidate: single disk. Two of the same size: RAID1.
# Anything else stops the install with a message (boot option voxnode.disk=sda or
# voxnode.disk=nvme0n1,nvme1n1 chooses explicitly).
VOLID='@VOLID@'
MIN_BYTES=$((20 * 1024 * 1024 * 1024))
PART=${VOXNODE_PART_KS:-/tmp/voxnode-part.ks}
CMDLINE=${VOXNODE_CMDLINE:-/proc/cmdline}
stop() {
    msg="voxnode install stopped: $*"
    echo "$msg" >&2
    for tty in /dev/tty1 /dev/console /dev/ttyS0; do
        [ -w "$tty" ] && printf '\n\n*** %s ***\n\n' "$msg" > "$tty" 2>/dev/null
    done
    exit 1
}
medium=""
mdev=$(blkid -L "$VOLID" 2>/dev/null | head -n1)
if [ -n "$mdev" ]; then
    medium=$(lsblk -ndo PKNAME "$mdev" 2>/dev/null | head -n1)
    [ -n "$medium" ] || medium=$(basename "$mdev")
fi
chosen=""
for arg in $(cat "$CMDLINE"); do
    case "$arg" in voxnode.disk=*) chosen=$(echo "${arg#voxnode.disk=}" | tr ',' ' ');; esac
done
if [ -z "$chosen" ]; then
    candidates=""
    while read -r name type size rm ro tran; do
        [ "$type" = disk ] || continue
        case "$name" in loop*|zram*|sr*|fd*|md*|dm-*) continue;; esac
        [ "$name" = "$medium" ] && continue
        [ "$rm" = 1 ] && continue
        [ "$ro" = 1 ] && continue
        [ "$tran" = usb ] && continue
        [ "$size" -ge "$MIN_BYTES" ] || continue
        candidates="$candidates $name:$size"
    done <<LSBLK
$(lsblk -dnbo NAME,TYPE,SIZE,RM,RO,TRAN 2>/dev/null | awk '{print $1, $2, $3, $4, $5, ($6 == "" ? "-" : $6)}')
LSBLK
    set -- $candidates
    case $# in
        0) stop "no internal disk of at least 20 GiB found (the install medium, USB and removable devices are never used)";;
        1) chosen=${1%%:*};;
        2) if [ "${1##*:}" = "${2##*:}" ]; then chosen="${1%%:*} ${2%%:*}"
           else stop "two internal disks of different sizes (${1%%:*}, ${2%%:*}): choose with the boot option voxnode.disk=NAME or voxnode.disk=NAME1,NAME2"; fi;;
        *) stop "$# internal disks found ($(echo "$candidates" | sed 's/:[0-9]*//g')): choose with the boot option voxnode.disk=NAME or voxnode.disk=NAME1,NAME2";;
    esac
fi
set -- $chosen
for d in "$@"; do
    [ -b "/dev/$d" ] || [ -n "$VOXNODE_PRE_TEST" ] || stop "voxnode.disk: /dev/$d is not a block device"
done
{
    echo "ignoredisk --only-use=$(echo "$@" | tr ' ' ',')"
    echo "clearpart --all --initlabel --disklabel=gpt --drives=$(echo "$@" | tr ' ' ',')"
    echo "zerombr"
    if [ $# -eq 1 ]; then
        echo "bootloader --location=mbr --boot-drive=$1 --timeout=3 --append=\"console=tty0 console=ttyS0,115200n8\""
        echo "part biosboot --fstype=biosboot --size=1 --ondisk=$1"
        echo "part /boot/efi --fstype=efi --size=600 --ondisk=$1"
        echo "part /boot --fstype=xfs --size=1024 --ondisk=$1"
        echo "part / --fstype=xfs --size=8192 --grow --ondisk=$1"
    elif [ $# -eq 2 ]; then
        echo "bootloader --location=mbr --driveorder=$1,$2 --timeout=3 --append=\"console=tty0 console=ttyS0,115200n8\""
        n=0
        for d in "$@"; do
            n=$((n + 1))
            echo "part biosboot --fstype=biosboot --size=1 --ondisk=$d"
            echo "part raid.efi$n --size=600 --ondisk=$d"
            echo "part raid.boot$n --size=1024 --ondisk=$d"
            echo "part raid.root$n --size=8192 --grow --ondisk=$d"
        done
        echo "raid /boot/efi --level=RAID1 --device=boot_efi --fstype=efi --label=EFI raid.efi1 raid.efi2"
        echo "raid /boot --level=RAID1 --device=boot --fstype=xfs raid.boot1 raid.boot2"
        echo "raid / --level=RAID1 --device=root --fstype=xfs raid.root1 raid.root2"
    else
        stop "voxnode.disk names $# disks; give one, or two for RAID1"
    fi
} > "$PART"
echo "voxnode: installing on $* ($([ $# -eq 2 ] && echo RAID1 || echo single disk))"
