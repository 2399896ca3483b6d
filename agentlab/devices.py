"""Which torch device a run or a benchmark trains on, checked before any work starts."""

from __future__ import annotations

from agentlab.errors import UserError


def check_device(device: str, *, key: str = "--device") -> str:
    """`device` if torch can use it, else a UserError naming `key`, the value and what is there; on a GPU it
    also turns on TF32 matrix products for the process (the README says so)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"{key}={device!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"{key}={device!r} is not allowed: agentlab trains on cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{key}={device!r}: this torch sees no CUDA GPU; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{key}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        # TF32 matrix products on the GPU (10-bit mantissa inputs, fp32 accumulation): several times the fp32 rate
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device
