# AWS: ENA and NVMe drivers in every initramfs; cloud-init only installs the EC2 key pair
# (voxnode-firstboot owns identity, disk growth and the admin password)
cat > /etc/dracut.conf.d/voxnode-aws.conf <<DRACUT
add_drivers+=" ena nvme xen-blkfront xen-netfront "
DRACUT
dracut -f --regenerate-all
cat > /etc/cloud/cloud.cfg.d/90-voxnode.cfg <<CLOUD
ssh_deletekeys: false
ssh_genkeytypes: []
growpart: {mode: "off"}
resize_rootfs: false
CLOUD
