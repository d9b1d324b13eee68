"""The batcher: concurrent requests share one call, each gets its own rows, a lone request does not wait."""

import threading
import time

import pytest
import torch

from cnnlab.serve.batching import Batcher

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


class Recorder:
    """A batched function that remembers the batch sizes it saw (and can be slow or fail)."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.sizes, self.delay, self.fail = [], delay, fail

    def __call__(self, x):
        self.sizes.append(len(x))
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("the network broke")
        return x.float() * 2


def _submit_together(batcher, inputs):
    """Each input from its own thread, all announced (expect) before any submits, as concurrent requests are."""
    results, barrier = [None] * len(inputs), threading.Barrier(len(inputs))

    def one(i):
        with batcher.expect():
            barrier.wait()
            time.sleep(0.01 * (i % 3))  # decoding takes a little while, differently per request
            results[i] = batcher(inputs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    fn = Recorder(delay=0.02)
    b = Batcher(fn, max_batch=64, max_wait=0.5)
    inputs = [torch.full((1 + i % 2, 3), float(i)) for i in range(12)]  # 1 or 2 rows each
    results = _submit_together(b, inputs)
    for x, r in zip(inputs, results):
        assert torch.equal(r, x * 2)  # each request its own rows, in its own order
    assert sum(fn.sizes) == sum(len(x) for x in inputs) == b.items
    assert len(fn.sizes) <= 3 and max(fn.sizes) >= 8  # batched: far fewer calls than requests
    assert b.stats()["batches"] == len(fn.sizes)
    b.close()


def test_a_batch_never_exceeds_max_batch():
    fn = Recorder(delay=0.01)
    b = Batcher(fn, max_batch=4, max_wait=0.2)
    _submit_together(b, [torch.ones(1, 2) for _ in range(10)])
    assert max(fn.sizes) <= 4 and sum(fn.sizes) == 10
    b.close()


def test_a_lone_request_does_not_wait_for_company():
    b = Batcher(Recorder(), max_batch=64, max_wait=2.0)  # a long wait that no lone request may pay
    start = time.monotonic()
    with b.expect():
        assert torch.equal(b(torch.ones(2, 3)), torch.full((2, 3), 2.0))
    assert time.monotonic() - start < 1.0
    b.close()


def test_a_failure_reaches_every_waiting_request_and_the_worker_lives_on():
    fn = Recorder(fail=True)
    b = Batcher(fn, max_batch=8, max_wait=0.2)
    with pytest.raises(ValueError, match="the network broke"):
        b(torch.ones(1, 2))
    fn.fail = False
    assert torch.equal(b(torch.ones(1, 2)), torch.full((1, 2), 2.0))
    b.close()


def test_a_request_that_fails_before_submitting_does_not_hold_the_others():
    b = Batcher(Recorder(), max_batch=8, max_wait=5.0)
    with pytest.raises(RuntimeError):
        with b.expect():
            raise RuntimeError("a bad upload")
    start = time.monotonic()
    assert torch.equal(b(torch.ones(1, 1)), torch.full((1, 1), 2.0))
    assert time.monotonic() - start < 1.0  # nothing announced is still coming
    b.close()


@pytest.mark.parametrize("kw, message", [({"max_batch": 0}, "max_batch"), ({"max_wait": -1}, "max_wait")])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Batcher(Recorder(), **kw)


def test_a_closed_batcher_works_again_when_used_again():
    """An app's lifespan closes its batcher at shutdown; the same app started again must still answer."""
    b = Batcher(Recorder(), max_batch=8, max_wait=0.01)
    assert torch.equal(b(torch.ones(1, 1)), torch.full((1, 1), 2.0))
    b.close()
    assert torch.equal(b(torch.ones(2, 1)), torch.full((2, 1), 2.0))
    b.close()
