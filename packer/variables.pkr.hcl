# Inputs of the disk-image and AMI builds. image/packer.py fills them from the ISO build
# (out/voxnode-<version>-x86_64.iso and its manifest).

variable "version" {
  type    = string
  default = "0.1.0"
}

variable "iso_path" {
  type        = string
  default     = "../out/voxnode-0.1.0-x86_64.iso"
  description = "The remastered installer ISO (make iso)."
}

variable "iso_checksum" {
  type        = string
  default     = "none"
  description = "sha256:<hex> of the ISO; image/packer.py passes the value from the .sha256 file."
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

variable "aws_region" {
  type    = string
  default = "eu-south-1"
}

variable "aws_s3_bucket" {
  type        = string
  default     = ""
  description = "Bucket the raw image is uploaded to for the snapshot import (image/ami.py)."
}

variable "repo_dir" {
  type        = string
  default     = ".."
  description = "The voxnode checkout (image/packer.py passes it; the templates may run from a copy)."
}
