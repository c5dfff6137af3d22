# Plugin requirements for Packer >= 1.7 (`packer init packer/`). Packer 1.6.6 (Debian 12,
# builders built in) rejects this block, so image/packer.py leaves this file out there.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}
