"""Register the tested AWS raw image as an AMI (``make ami``: ``image.packer`` runs it on
the disk it built; alone, ``python -m image.ami`` reads that disk's result,
``out/packer/ami.json``). Needs the AWS CLI v2, credentials (``aws configure`` or
``AWS_PROFILE``) allowed to use S3 and EC2 import, the ``vmimport`` service role, and
``VOXNODE_S3_BUCKET``.

Steps: check the raw disk is the one recorded (sha256) → upload it to S3 → ``ec2
import-snapshot`` (wait) → ``ec2 register-image`` with ``--ena-support``, ``--boot-mode
uefi-preferred`` and ``--imds-support v2.0`` (IMDSv2 required on every instance launched
from it) → tag. The result, ``out/ami.json`` (``image.artifacts.AmiBuild``), names the AMI
and its snapshot. Never run by the tests (no AWS here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from image.artifacts import AmiBuild, DiskBuild, read_result, write_result
from image.buildutil import (
    EXIT_USAGE,
    EXIT_WRONG_INPUT,
    OUT,
    BuildError,
    absolute,
    guarded,
    need_tools,
    output_dir,
    run,
    say,
    step,
)


def aws(*args: str) -> Any:
    """One AWS CLI call, its JSON answer."""
    out = run(["aws", *args, "--output", "json"])
    return json.loads(out) if out.strip() else {}


def preflight(bucket: str) -> None:
    """What the registration needs before anything is built or uploaded."""
    if not bucket:
        raise BuildError("no S3 bucket: set AWS_S3_BUCKET=… (make ami) or VOXNODE_S3_BUCKET",
                         EXIT_USAGE)
    need_tools("aws")


def register(disk: DiskBuild, *, name: str, bucket: str) -> AmiBuild:
    """Upload ``disk``'s raw image, import it as a snapshot and register the AMI."""
    preflight(bucket)
    if disk.target != "ami":
        raise BuildError(f"{disk.raw.path} is the {disk.target} disk, not the AWS one "
                         "(ks-aws.cfg): build it with `make ami`", EXIT_WRONG_INPUT)
    with step(f"check {disk.raw.path.name} (sha256)"):
        raw = disk.raw.check("make ami").path
    region = os.environ.get("AWS_REGION", "?")
    with step("AWS credentials"):
        ident = aws("sts", "get-caller-identity")
        say(f"    account {ident.get('Account')}, region {region}")
    key = f"voxnode/{raw.name}"
    with step(f"upload s3://{bucket}/{key}"):
        run(["aws", "s3", "cp", "--only-show-errors", raw, f"s3://{bucket}/{key}"])
    with step("import-snapshot (wait)"):
        task = aws("ec2", "import-snapshot", "--description", name, "--disk-container",
                   json.dumps({"Format": "RAW", "UserBucket": {"S3Bucket": bucket,
                                                               "S3Key": key}}))
        task_id = str(task["ImportTaskId"])
        snapshot = ""
        while not snapshot:
            time.sleep(20)
            state = aws("ec2", "describe-import-snapshot-tasks", "--import-task-ids", task_id)
            detail = state["ImportSnapshotTasks"][0]["SnapshotTaskDetail"]
            status = detail.get("Status")
            say(f"    {task_id}: {status} {detail.get('Progress', '')}%")
            if status == "completed":
                snapshot = str(detail["SnapshotId"])
            elif status in ("deleted", "deleting"):
                raise BuildError(f"import-snapshot {task_id} failed: {detail.get('StatusMessage')}")
    with step("register-image (ENA, uefi-preferred, IMDSv2 required)"):
        image = aws("ec2", "register-image", "--name", name, "--architecture", "x86_64",
                    "--virtualization-type", "hvm", "--root-device-name", "/dev/sda1",
                    "--ena-support", "--sriov-net-support", "simple",
                    "--boot-mode", "uefi-preferred", "--imds-support", "v2.0",
                    "--block-device-mappings", json.dumps([{
                        "DeviceName": "/dev/sda1",
                        "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3",
                                "DeleteOnTermination": True}}]))
        ami = str(image["ImageId"])
        aws("ec2", "create-tags", "--resources", ami, snapshot, "--tags",
            f"Key=Name,Value={name}", "Key=voxnode:source,Value=" + raw.name)
    say(f"ami: {ami} ({name})")
    return AmiBuild(image_id=ami, snapshot_id=snapshot, name=name, region=region,
                    disk_sha256=disk.raw.sha256)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.ami")
    p.add_argument("--disk", type=Path, default=OUT / "packer" / "ami.json",
                   help="the result of the AWS disk build (default %(default)s)")
    p.add_argument("--name", default="", help="the AMI's name (default voxnode-VERSION-x86_64)")
    p.add_argument("--bucket", default=os.environ.get("VOXNODE_S3_BUCKET", ""))
    p.add_argument("--out", type=Path, default=OUT, help="where out/ami.json goes")
    args = p.parse_args(argv)
    out = output_dir(args.out, "--out")
    disk = read_result(absolute(args.disk), DiskBuild, made_by="make ami")
    registered = register(disk, name=args.name or f"voxnode-{disk.version}-x86_64",
                          bucket=args.bucket)
    say(f"    {write_result(registered, out / 'ami.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
