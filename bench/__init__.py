"""Benchmark suite of MIGT-TVDT: `python -m bench --help`.

Suites (one timing harness, bench/harness.py):
- model:     inference forward and full training step of the default-config model;
- attention: masked attention along time and along variables, fwd and fwd+bwd;
- norms:     RevIN and the gated residual norm, fwd and fwd+bwd, against copy bandwidth;
- ceilings:  device-to-device copy bandwidth and a GEMM (what the others are judged against).
Rows are appended to bench/results/<device-slug>.jsonl; see bench/README.md.
Beside the suites: `python -m bench --max-batch` (bench/max_batch.py), one
profiled training step (bench/profile.py) and the roofline of a training step
without a GPU (bench/roofline.py).
"""
