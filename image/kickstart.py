"""Kickstart rendering (``kickstart/``): one unattended install, three variants.

- ``iso``: the remastered ISO (USB stick / VM CD). ``%pre`` chooses the target disk(s):
  never the install medium or a USB/removable device, RAID1 on two matching disks, a clear
  stop otherwise; reboots when done.
- ``disk``: the Packer qemu build of the raw/qcow2 image for vendors (one virtio disk,
  powers off when done).
- ``aws``: like ``disk``, plus ENA/NVMe drivers in the initramfs and cloud-init for the
  EC2 key pair; the source of the AMI.

Templates are ``kickstart/<variant>.ks.in``; ``@INCLUDE file@`` lines pull in the shared
pieces and ``@NAME@`` tokens are filled from ``render()``'s arguments. Pure: text in,
text out (``main`` writes the files).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from image.buildutil import OUT, REPO, BuildError, guarded, output_dir, say, version

KS_DIR = REPO / "kickstart"
VARIANTS = ("iso", "disk", "aws")
DEFAULT_VOLID = "VOXNODE-8-x86_64"


@dataclass(frozen=True)
class Variant:
    template: str
    extra_packages: str = ""
    extra_boot_args: str = ""
    extra_post: str = ""


def _variants() -> dict[str, Variant]:
    return {
        "iso": Variant("iso.ks.in"),
        "disk": Variant("disk.ks.in"),
        "aws": Variant("disk.ks.in", extra_packages="cloud-init",
                       extra_boot_args="nvme_core.io_timeout=4294967295 net.ifnames=0",
                       extra_post="@INCLUDE aws-post.sh@"),
    }


def ks_file_name(variant: str) -> str:
    """The name on the ISO: ``ks.cfg`` for the default install, ``ks-<variant>.cfg`` else."""
    return "ks.cfg" if variant == "iso" else f"ks-{variant}.cfg"


def _expand(text: str, depth: int = 0) -> str:
    if depth > 4:
        raise BuildError("kickstart: @INCLUDE nested too deep")

    def include(match: re.Match[str]) -> str:
        path = KS_DIR / match.group(1)
        if not path.is_file():
            raise BuildError(f"kickstart: included file {path} not found")
        return _expand(path.read_text().rstrip("\n"), depth + 1)

    return re.sub(r"^@INCLUDE ([\w.-]+)@$", include, text, flags=re.M)


def render(variant: str, *, volid: str, build_id: str, version_: str,
           base_url: str = "") -> str:
    """The kickstart of ``variant``. ``base_url``: an AlmaLinux 8 mirror for a boot ISO
    (BaseOS and AppStream from the network); empty = the DVD's own repositories."""
    if variant not in VARIANTS:
        raise BuildError(f"unknown kickstart variant {variant!r} (one of {', '.join(VARIANTS)})")
    spec = _variants()[variant]
    text = _expand((KS_DIR / spec.template).read_text())
    text = _expand(text.replace("@EXTRA_POST@", spec.extra_post))
    values = {"VARIANT": variant, "VOLID": volid, "BUILD_ID": build_id, "VERSION": version_,
              "EXTRA_PACKAGES": spec.extra_packages, "EXTRA_BOOT_ARGS": spec.extra_boot_args}
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if base_url:
        mirror = base_url.rstrip("/")
        text = text.replace("\nrepo --name=voxnode", (
            f"\nurl --url={mirror}/BaseOS/x86_64/os/\n"
            f"repo --name=AppStream --baseurl={mirror}/AppStream/x86_64/os/\n"
            "repo --name=voxnode"), 1)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise BuildError(f"kickstart {variant}: unfilled tokens {', '.join(left)}")
    # tidy: no trailing blanks, no empty lines left by empty tokens in %packages
    lines = [ln.rstrip() for ln in text.splitlines()]
    text = "\n".join(lines).replace("\n\n%end", "\n%end").replace(' "\n', '"\n')
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def write_all(dest: Path, *, volid: str, build_id: str, version_: str,
              base_url: str = "") -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in VARIANTS:
        path = dest / ks_file_name(variant)
        path.write_text(render(variant, volid=volid, build_id=build_id,
                                  version_=version_, base_url=base_url))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.kickstart",
                                description="render the kickstart variants")
    p.add_argument("--out", type=Path, default=OUT / "kickstart")
    p.add_argument("--volid", default=DEFAULT_VOLID)
    p.add_argument("--build-id", default="dev")
    args = p.parse_args(argv)
    out = output_dir(args.out, "--out")
    for path in write_all(out, volid=args.volid, build_id=args.build_id, version_=version()):
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
