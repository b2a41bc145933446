import os

# The Triton kernels run on the CPU through the interpreter; this must be set
# before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# A developer's MIGT_BACKEND must not change what the tests exercise.
os.environ.pop("MIGT_BACKEND", None)

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
