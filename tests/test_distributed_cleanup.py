"""The process group a run joins under torchrun ends with the run, also when the run fails.

A world of one on the CPU, over gloo: torchrun's environment (rank 0 of 1, a rendezvous on a
free localhost port) with ``is_distributed`` saying yes, as it does for a launch of several.
"""

import contextlib
import socket

import pytest
import torch
import torch.distributed as dist

from cnnlab import runtime
from cnnlab.runtime import DistInfo, distributed

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_group_left():
    """Each test starts without a group, and a failing one leaves none to the next."""
    assert not dist.is_initialized()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def torchrun_env(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "is_distributed", lambda: True)


def test_the_group_it_makes_is_destroyed_after_the_body(torchrun_env):
    with distributed(CPU) as info:
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert info == DistInfo(rank=0, world_size=1, local_rank=0)
        t = torch.ones(2)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0]
    assert not dist.is_initialized()


def test_the_group_is_destroyed_when_the_body_raises(torchrun_env):
    with pytest.raises(KeyError, match="failed inside"):
        with distributed(CPU):
            assert dist.is_initialized()
            raise KeyError("failed inside")
    assert not dist.is_initialized()
    with distributed(CPU):  # and a later run makes a new one
        assert dist.is_initialized()
    assert not dist.is_initialized()


def test_a_group_the_caller_made_is_used_and_left_to_the_caller(torchrun_env, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    with pytest.raises(ValueError):
        with distributed(CPU) as info:
            assert info.rank == 0 and info.world_size == 1
            raise ValueError
    assert dist.is_initialized()


def test_one_process_without_torchrun_makes_no_group():
    with distributed(CPU) as info:
        assert info == DistInfo() and not dist.is_initialized()
    assert not dist.is_initialized()


def test_a_training_run_stopped_by_an_error_leaves_no_group(torchrun_env, tmp_path):
    from cnnlab.cifar.train import train
    from cnnlab.config import CifarTrainConfig
    from cnnlab.run import RunDir
    from tests.conftest import train_until, write_cifar_batches

    joined = []
    real = runtime.distributed

    @contextlib.contextmanager
    def watching(device):  # records that the run did join a group
        with real(device) as info:
            joined.append(dist.is_initialized())
            yield info

    data = write_cifar_batches(tmp_path / "c", n_per_class=2).parent
    cfg = CifarTrainConfig(data_dir=str(data), blocks="A", width=0.125, batch_size=16, epochs=2, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cnnlab.engine.distributed", watching)
        train_until(train, cfg, tmp_path / "run", epoch=1)  # raises after epoch 1, as a crash would
    assert joined == [True] and not dist.is_initialized()
    assert RunDir(tmp_path / "run").last_checkpoint.is_file()  # it stopped after epoch 1, not at the start


# tests/cuda/conftest.py: what the CUDA suite stops after its last test.


def test_the_cuda_suites_teardown_destroys_a_group_left_open(tmp_path):
    from tests.cuda.conftest import stop_background_work

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    stop_background_work()
    assert not dist.is_initialized()
    stop_background_work()  # nothing left to stop: no error


def test_the_cuda_suites_teardown_shuts_compile_workers_down_only_where_a_test_compiled(monkeypatch):
    import sys
    import types

    from tests.cuda.conftest import stop_background_work

    monkeypatch.delitem(sys.modules, "torch._inductor.async_compile", raising=False)
    stop_background_work()
    assert "torch._inductor.async_compile" not in sys.modules  # stopping starts no pool of its own
    stopped = []
    fake = types.SimpleNamespace(shutdown_compile_workers=lambda: stopped.append(True))
    monkeypatch.setitem(sys.modules, "torch._inductor.async_compile", fake)
    stop_background_work()
    assert stopped == [True]
