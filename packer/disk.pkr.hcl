# Raw (vendor preload) and qcow2 disk images: the remastered ISO installs itself onto one
# virtio disk with kickstart ks-disk.cfg and powers off. Validated offline by Packer 1.6.6.

locals {
  # isolinux: <tab> edits the default (install) entry; the last inst.ks= wins
  boot_ks_disk = [
    "<tab> inst.ks=hd:LABEL=${var.volume_id}:/ks-disk.cfg inst.cmdline console=ttyS0,115200n8<enter>"
  ]
  boot_ks_aws = [
    "<tab> inst.ks=hd:LABEL=${var.volume_id}:/ks-aws.cfg inst.cmdline console=ttyS0,115200n8<enter>"
  ]
}

source "qemu" "raw" {
  iso_url          = var.iso_path
  iso_checksum     = var.iso_checksum
  output_directory = "${var.output_dir}/raw"
  vm_name          = "${var.image_name}.raw"
  format           = "raw"
  disk_size        = var.disk_size
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  memory           = 2048
  cpus             = 2
  headless         = true
  boot_wait        = "3s"
  boot_command     = local.boot_ks_disk
  # the kickstart powers the machine off when the install is done
  communicator     = "none"
  shutdown_timeout = "90m"
  qemuargs = [
    ["-serial", "file:${var.output_dir}/raw-install-console.log"]
  ]
}

source "qemu" "aws" {
  iso_url          = var.iso_path
  iso_checksum     = var.iso_checksum
  output_directory = "${var.output_dir}/aws"
  vm_name          = "${var.image_name}-aws.raw"
  format           = "raw"
  disk_size        = "8G"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  memory           = 2048
  cpus             = 2
  headless         = true
  boot_wait        = "3s"
  boot_command     = local.boot_ks_aws
  communicator     = "none"
  shutdown_timeout = "90m"
  qemuargs = [
    ["-serial", "file:${var.output_dir}/aws-install-console.log"]
  ]
}

build {
  name    = "disk"
  sources = ["source.qemu.raw"]

  # the same installed disk as qcow2 for KVM / Proxmox / OpenStack
  post-processor "shell-local" {
    inline = [
      "qemu-img convert -O qcow2 -c ${var.output_dir}/raw/${var.image_name}.raw ${var.output_dir}/raw/${var.image_name}.qcow2"
    ]
  }
}
