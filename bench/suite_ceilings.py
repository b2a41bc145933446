"""Ceilings suite: what the device can do at best, measured in the same run.

copy: a device-to-device tensor copy (bytes read + written), the bound of
every memory-bound op (the norms, the elementwise parts of the model);
gemm: a square matrix product in each run dtype (random data, never zeros),
the bound of the matrix work (Linear layers, attention's two products).
"""
from __future__ import annotations

import torch

from bench.common import DTYPES, RunSettings
from bench.harness import Case, Timed, Work
from bench.suite_norms import copy_case

GEMM_SIZE = {"cuda": 8192, "cpu": 1024}


def cases(settings: RunSettings) -> list:
    n = GEMM_SIZE["cuda" if settings.device.type == "cuda" else "cpu"]
    out = [copy_case(settings, "ceilings")]
    for dtype in settings.dtypes:
        out.append(Case(suite="ceilings", op="gemm", backend="torch", dtype=dtype, batch=0,
                        shape=f"{n}x{n}x{n}", setup=_gemm_setup(settings, dtype, n)))
    return out


def _gemm_setup(settings: RunSettings, dtype: str, n: int):
    def setup() -> Timed:
        g = torch.Generator(device=settings.device).manual_seed(0)
        a, b = (torch.randn(n, n, generator=g, device=settings.device).to(DTYPES[dtype]) for _ in range(2))
        return Timed(lambda: a @ b, Work(2.0 * n**3, "TFLOP/s"))

    return setup
