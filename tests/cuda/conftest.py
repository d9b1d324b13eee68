"""The CUDA suite leaves nothing running after its last test, so pytest's summary and exit follow at once.

Two things outlive a test unless stopped: a torch.distributed process group (NCCL's watchdog
threads and connections), and torch.compile's pool of compile workers, which inductor starts
with one process per core (up to 32) and keeps for the life of the process. Inductor stops
its pool at exit too; stopping it here, after the tests, puts the time it takes in the
``--durations`` report (as the teardown of the last test) instead of after the summary.
"""

import sys

import pytest


def stop_background_work() -> None:
    """Destroy a process group left open and shut inductor's compile workers down, if any were started."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    compiling = sys.modules.get("torch._inductor.async_compile")  # imported only by a test that compiled
    if compiling is not None:
        compiling.shutdown_compile_workers()


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running():
    yield
    stop_background_work()
