"""maskray.memory: freed memory is kept, so a step's large tensors do not come back as fresh (faulting) pages."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource
import torch
from maskray.memory import keep_freed_memory
said = keep_freed_memory()
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20
def step():  # a step's activations: tensors of several sizes (112 MiB in all) written, then freed; the 80 MiB one
    # is above anything glibc's adaptive thresholds serve from the heap by default
    kept = [torch.empty(n * 2 ** 20).fill_(1.0) for n in (6, 2, 20, 2)]
    del kept
faults, rss = [], []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    rss.append(rss_mib())
print(json.dumps({"said": said, "faults": faults, "rss": rss}))
"""


def _probe(malloc: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MASKRAY_MALLOC"}
    if malloc is not None:
        env["MASKRAY_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_steps_reuse_the_pages_of_the_steps_before():
    kept, system = _probe(None), _probe("system")
    assert kept["said"].startswith("glibc heap, freed memory kept")
    assert system["said"] == "system defaults (MASKRAY_MALLOC=system)"
    pages = 112 * 2 ** 20 // 4096  # pages written per step
    # glibc's defaults: blocks over the mmap threshold come back as fresh pages, each faulting again
    assert min(system["faults"][10:]) > pages // 2  # the 80 MiB block alone is 20,480 pages
    # kept: once the heap has grown, later steps fault (almost) never, and the heap stops growing
    assert max(kept["faults"][10:]) < pages // 50
    assert kept["rss"][-1] - kept["rss"][10] < 1


def test_an_unknown_malloc_choice_is_one_clear_error(monkeypatch):
    from maskray.errors import MaskrayError
    from maskray.memory import keep_freed_memory
    monkeypatch.setenv("MASKRAY_MALLOC", "jemalloc")
    keep_freed_memory.cache_clear()
    try:
        with pytest.raises(MaskrayError, match="MASKRAY_MALLOC='jemalloc'"):
            keep_freed_memory()
    finally:
        keep_freed_memory.cache_clear()
