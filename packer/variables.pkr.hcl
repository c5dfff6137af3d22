# Inputs of the disk-image and AMI builds. image/packer.py fills them from the ISO build's
# result (out/iso.json) and records what the builds wrote (out/packer/<build>.json).

variable "image_name" {
  type        = string
  default     = "voxnode-0.1.0-x86_64"
  description = "File name stem of the disk images (<stem>.raw, <stem>.qcow2, <stem>-aws.raw)."
}

variable "iso_path" {
  type        = string
  default     = "../out/voxnode-0.1.0-x86_64.iso"
  description = "The remastered installer ISO (make iso)."
}

variable "iso_checksum" {
  type        = string
  default     = "none"
  description = "sha256:<hex> of the ISO; image/packer.py passes the digest the ISO build recorded."
}

variable "volume_id" {
  type        = string
  default     = "AlmaLinux-8-10-x86_64-dvd"
  description = "Volume id of the ISO (kept from the AlmaLinux base ISO), escaped for the kernel command line."
}

variable "output_dir" {
  type    = string
  default = "../out/packer"
}

variable "disk_size" {
  type        = string
  default     = "12G"
  description = "Small on purpose: voxnode-firstboot grows the root file system to the real disk."
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm on a build host with working KVM; tcg (slow) elsewhere."
}
