"""The dry run: the exact command a lent GPU gets, and the wheels it must carry (none, if the image has
everything the GPU path imports), checked against the image's package list `bench/gpu_image_packages.txt`.

The GPU machine has no package registry: a missing package travels as a wheel under `.whl` (ignored by
git, named in the run's `carry`), and the working tree with the wheels must stay under 64 MiB.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
IMAGE_PACKAGES = REPO / "bench" / "gpu_image_packages.txt"
WHEELS = ".whl"
TREE_LIMIT = 64 * 2**20
COMMAND_LIMIT = 2000
IMAGE_PYTHON = "3.12"
# extras the GPU path imports; `video` is left out on purpose: imageio-ffmpeg is absent on the image and
# nothing the check runs reads or writes a video
EXTRAS = ("jax", "torch")
ALSO = ("matplotlib",)  # parity's figures
# core dependencies nothing the check runs imports: zstandard codes `.dfc` files (dfc.entropy), which the
# check neither reads nor writes, and the image has no wheel of it
UNUSED = ("zstandard",)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
TIMEOUT_S = 480  # the device call's timeout_s: the run's 300 s budget, imports, and the last stage's overrun


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image_packages(path: Path = IMAGE_PACKAGES) -> dict[str, str | None]:
    """{normalised name: version or None} of the GPU image."""
    out: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normalise(name)] = version or None
    return out


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The requirement strings of everything the GPU path imports."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    found = [r for r in project["dependencies"] if normalise(re.split(r"[<>=!~;\[ ]", r)[0]) not in UNUSED]
    for extra in EXTRAS:
        found += project["optional-dependencies"][extra]
    return found + list(ALSO)


def wheels_needed(reqs: list[str], image: dict[str, str | None]) -> list[tuple[str, str]]:
    """[(requirement, why)] of what the image lacks or holds at a version outside the requirement.
    A package the image has at an unrecorded version counts as there."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    needed = []
    for text in reqs:
        req = Requirement(text)
        name = normalise(req.name)
        if name not in image:
            needed.append((text, "not on the image"))
        elif image[name] and req.specifier and Version(image[name]) not in req.specifier:
            needed.append((text, f"the image has {image[name]}"))
    return needed


def device_command(device: str = "cuda", config: str = "published", wheels: bool = False) -> str:
    """The command line of the device call (run from the repository root there; $OUT comes back)."""
    install = (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target /tmp/site {WHEELS}/*.whl && export PYTHONPATH=/tmp/site || exit; "
    )
    run = (
        f"set -o pipefail; PYTHONUNBUFFERED=1 python3 -m bench.gpu_check --device {device} --config {config} "
        f'--out reports/gpu-check --archive-dir "$OUT" 2>&1 | tee "$OUT/gpu-check.log"'
    )
    return (install if wheels else "") + run


def download_command(requirement: str) -> list[str]:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        IMAGE_PYTHON,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(REPO / WHEELS),
        requirement,
    ]


def tree_bytes() -> int:
    """What travels: tracked and untracked-not-ignored files, plus the wheels."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    total = sum((REPO / p.decode()).stat().st_size for p in listed if p and (REPO / p.decode()).is_file())
    wheels = REPO / WHEELS
    return total + sum(w.stat().st_size for w in wheels.glob("*.whl")) if wheels.is_dir() else total


def main(device: str, config: str, fetch: list[str] | None) -> int:
    needed = wheels_needed(requirements(), read_image_packages())
    names = [r for r, _ in needed] + list(fetch or [])
    if fetch is not None:
        for requirement in names:
            print(f"dry run: fetching {requirement}", flush=True)
            subprocess.run(download_command(requirement), check=True)
    wheels = sorted((REPO / WHEELS).glob("*.whl")) if (REPO / WHEELS).is_dir() else []
    command = device_command(device, config, wheels=bool(wheels))
    size = tree_bytes()
    print(f"device command ({len(command)} of {COMMAND_LIMIT} characters):")
    print(command)
    print(f"carry: {[WHEELS] if wheels else []}; timeout_s: {TIMEOUT_S}")
    if needed:
        print("wheels needed (absent on the image, or at another version):")
        for requirement, why in needed:
            print(f"  {requirement}: {why}")
        if fetch is None:
            print("  fetch them with: python -m bench.gpu_check --dry-run --fetch")
    else:
        print(
            f"wheels needed: none (every package the GPU path imports is on the image: {IMAGE_PACKAGES.name})"
        )
    if wheels:
        print(f"wheels under {WHEELS}/: " + ", ".join(w.name for w in wheels))
    print(f"travels: {size / 2**20:.1f} MiB of {TREE_LIMIT / 2**20:.0f} MiB (working tree and wheels)")
    too_big = size > TREE_LIMIT or len(command) > COMMAND_LIMIT
    if too_big:
        print("dry run: error: over the device limits above", file=sys.stderr)
    return 1 if too_big else 0
