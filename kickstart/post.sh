# voxnode %post (in the installed system): services, first-boot identity, root lock,
# BIOS + UEFI boot, provenance.
set -eu
exec >> /root/voxnode-ks-post.log 2>&1
echo "voxnode %post @VARIANT@ @BUILD_ID@ $(date -u +%FT%TZ)"

systemctl enable voxnode-agent.service voxnode-firstboot.service sshd.service chronyd.service

# root has no password login (rootpw --lock); sshd takes keys only
passwd -l root || :
sed -i -E 's/^#?PermitRootLogin .*/PermitRootLogin prohibit-password/; s/^#?PasswordAuthentication .*/PasswordAuthentication no/' /etc/ssh/sshd_config

# boot in both firmware modes whichever one installed it (the disk may move: raw images)
bootdisk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /boot)" 2>/dev/null | head -n1 || :)
if [ -d /sys/firmware/efi ]; then
    for d in $(lsblk -no PKNAME "$(findmnt -no SOURCE /)" 2>/dev/null | sort -u); do
        case "$d" in md*) continue;; esac
        grub2-install --target=i386-pc "/dev/$d" || echo "voxnode: BIOS boot on $d failed"
    done
    grub2-mkconfig -o /boot/grub2/grub.cfg
else
    grub2-mkconfig -o /boot/efi/EFI/almalinux/grub.cfg
fi
echo "boot disk: ${bootdisk:-?}"

# per-unit identity is made at the first boot (voxnode-firstboot.service)
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
rm -f /var/lib/voxnode/firstboot.done

# provenance
cat >> /usr/lib/os-release <<OSREL
VOXNODE_VERSION="@VERSION@"
VOXNODE_BUILD_ID="@BUILD_ID@"
VOXNODE_VARIANT="@VARIANT@"
OSREL
mkdir -p /etc/voxnode
cat > /etc/voxnode/build.json <<JSON
{"version": "@VERSION@", "build_id": "@BUILD_ID@", "variant": "@VARIANT@",
 "installed": "$(date -u +%FT%TZ)", "agent_rpm": "$(rpm -q voxnode)"}
JSON
dnf clean all || :
