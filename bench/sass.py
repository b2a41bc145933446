"""Reading a SASS listing (cuobjdump -sass): the instruction count of a
compiled kernel and of each of its loop bodies, for bench/compile_check.py's
--sass. Pure text work, importable anywhere (compile_check itself switches
the Triton interpreter off at import)."""
from __future__ import annotations

import re


def instructions(listing: str) -> list:
    """(address, instruction) pairs of a cuobjdump -sass listing."""
    return [(int(a, 16), ins) for a, ins in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;/]+?)\s*;", listing)]


def counts(lines) -> tuple:
    """(instructions, [instructions of each loop body]) of (address,
    instruction) pairs: a loop is a branch back to a lower address, its body
    what lies from that address to the branch."""
    addresses = [a for a, _ in lines]
    bodies = []
    for address, ins in lines:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ins)
        if target and int(target[1], 16) < address:
            bodies.append(sum(1 for a in addresses if int(target[1], 16) <= a <= address))
    return len(lines), bodies
