"""Running `dfc` as a user would (a subprocess of the installed script) and making small weight folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("dfc")


def dfc(
    *args: object, cwd: Path | None = None, timeout: float = 300, wrapper: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess:
    """`dfc ARGS...` with the hub offline; extra keyword arguments are environment variables. `wrapper`
    is a command line that runs the rest (`unshare ...`)."""
    command = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dfc.cli"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", **env}
    # the checkout first, so the script runs this code even when the editable install is stale
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [*wrapper, *command, *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    """The single error line of a failed command (asserting it failed, and said so in one line)."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dfc {command}: error: "), lines[0]
    return lines[0]


def save_weights(folder: Path, preset: str, seed: int = 0) -> Path:
    """A freshly initialised torch_impl model of `preset` as `folder/model.safetensors` + `config.json`."""
    import torch
    from safetensors.torch import save_file

    import torch_impl
    from common.config import PRESETS

    config = PRESETS[preset]
    torch.manual_seed(seed)
    model = (torch_impl.VideoVAE if config.model_type == "vae" else torch_impl.VideoDiT)(config)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


_MEASURED = r"""
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

{body}
"""


def measured_child(body: str, limit: int, timeout: float = 240) -> dict:
    """Run `body` in a fresh Python whose data segment is capped at `limit` bytes (RLIMIT_DATA: an
    RLIMIT_AS that low kills `import torch` itself); `hwm()` there is its peak resident memory (VmHWM).
    The body prints one JSON line last; that is the answer."""
    code = _MEASURED.format(limit=limit, body=body)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
