"""A pytest fixture that checks --compile wiring without inductor.

torch.compile is replaced by a real compile with an eager backend that counts
the graphs it is given: a count > 0 proves the compiled wrapper ran. (Inductor
compiles the tiny model in ~50 s on a 2-core CPU; the eager backend in ~2 s.)
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def compile_spy(monkeypatch):
    calls = {"modules": [], "graphs": 0}
    real_compile = torch.compile

    def counting_backend(gm, example_inputs):
        calls["graphs"] += 1
        return gm.forward

    def spy(module, *args, **kwargs):
        calls["modules"].append(module)
        return real_compile(module, backend=counting_backend)

    monkeypatch.setattr(torch, "compile", spy)
    return calls
