# The AMI: the ks-aws.cfg install (ENA/NVMe drivers, cloud-init for the key pair) made
# into a raw disk locally; image/packer.py records it (out/packer/ami.json) and image/ami.py
# imports it as an EBS snapshot and registers it with ENA, boot mode uefi-preferred and
# IMDSv2 required (the README argues why this is an import of the tested raw image rather
# than an amazon-ebs build).

build {
  name    = "ami"
  sources = ["source.qemu.aws"]
}
