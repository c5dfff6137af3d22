"""Register the tested AWS raw image as an AMI (run by ``packer/aws.pkr.hcl``'s
post-processor, i.e. ``make ami``). Needs the AWS CLI v2, credentials (``aws configure``
or ``AWS_PROFILE``) allowed to use S3 and EC2 import, the ``vmimport`` service role, and
``VOXNODE_S3_BUCKET``.

Steps: upload the raw disk to S3 → ``ec2 import-snapshot`` (wait) → ``ec2
register-image`` with ``--ena-support``, ``--boot-mode uefi-preferred`` and
``--imds-support v2.0`` (IMDSv2 required on every instance launched from it) → tag.
Never run by the tests (no AWS here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from image.buildutil import (
    EXIT_MISSING_INPUT,
    EXIT_USAGE,
    BuildError,
    guarded,
    need_tools,
    run,
    say,
    step,
)


def aws(*args: str) -> Any:
    """One AWS CLI call, its JSON answer."""
    out = run(["aws", *args, "--output", "json"])
    return json.loads(out) if out.strip() else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.ami")
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--bucket", default=os.environ.get("VOXNODE_S3_BUCKET", ""))
    args = p.parse_args(argv)
    if not args.raw.is_file():
        raise BuildError(f"raw image {args.raw} not found (make ami builds it)",
                         EXIT_MISSING_INPUT)
    if not args.bucket:
        raise BuildError("no S3 bucket: set AWS_S3_BUCKET=… (make ami) or VOXNODE_S3_BUCKET",
                         EXIT_USAGE)
    need_tools("aws")
    with step("AWS credentials"):
        ident = aws("sts", "get-caller-identity")
        say(f"    account {ident.get('Account')}, region {os.environ.get('AWS_REGION', '?')}")
    key = f"voxnode/{args.raw.name}"
    with step(f"upload s3://{args.bucket}/{key}"):
        run(["aws", "s3", "cp", "--only-show-errors", args.raw, f"s3://{args.bucket}/{key}"])
    with step("import-snapshot (wait)"):
        task = aws("ec2", "import-snapshot", "--description", args.name, "--disk-container",
                   json.dumps({"Format": "RAW", "UserBucket": {"S3Bucket": args.bucket,
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
        image = aws("ec2", "register-image", "--name", args.name, "--architecture", "x86_64",
                    "--virtualization-type", "hvm", "--root-device-name", "/dev/sda1",
                    "--ena-support", "--sriov-net-support", "simple",
                    "--boot-mode", "uefi-preferred", "--imds-support", "v2.0",
                    "--block-device-mappings", json.dumps([{
                        "DeviceName": "/dev/sda1",
                        "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3",
                                "DeleteOnTermination": True}}]))
        ami = str(image["ImageId"])
        aws("ec2", "create-tags", "--resources", ami, snapshot, "--tags",
            f"Key=Name,Value={args.name}", "Key=voxnode:source,Value=" + args.raw.name)
    say(f"ami: {ami} ({args.name})")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
