# The AMI: the ks-aws.cfg install (ENA/NVMe drivers, cloud-init for the key pair) made
# into a raw disk locally, then imported as an EBS snapshot and registered by image/ami.py
# with ENA, boot mode uefi-preferred and IMDSv2 required (the README argues why this is an
# import of the tested raw image rather than an amazon-ebs build).

build {
  name    = "ami"
  sources = ["source.qemu.aws"]

  post-processor "shell-local" {
    environment_vars = ["AWS_REGION=${var.aws_region}", "VOXNODE_S3_BUCKET=${var.aws_s3_bucket}"]
    inline = [
      "cd ${var.repo_dir} && .venv/bin/python -m image.ami --raw ${var.output_dir}/aws/voxnode-${var.version}-x86_64-aws.raw --name voxnode-${var.version}-x86_64"
    ]
  }
}
