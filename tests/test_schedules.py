"""The learning-rate schedules, the time budget and the weight average of the engine, on a fake clock."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.engine import (Schedule, TimeBudget, WeightAverage, cosine_decay, exponential_decay, linear_decay,
                           one_cycle)


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)``."""

    def __init__(self, start: float = 100.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _rates(schedule: Schedule, steps: int, clock: FakeClock | None = None, seconds_per_step: float = 1.0):
    """The rate of every step of a LambdaLR driven by ``schedule``, as the engine steps it."""
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule.factor(t))
    budget = schedule.budget
    if budget is not None:
        budget.begin()
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if clock is not None:
            clock.advance(seconds_per_step)
            budget.tick()
        sched.step()
    return rates, opt.param_groups[0]["lr"]


def test_linear_and_cosine_warm_up_then_fall_to_zero_at_the_last_step():
    for decay, mid in ((linear_decay, 0.5), (cosine_decay, 0.5)):
        s = Schedule(steps_per_epoch=10, decay=decay(4, 1), warmup_steps=10)
        rates, after = _rates(s, 40)
        assert rates[:10] == pytest.approx([0.1 * (i + 1) / 10 for i in range(10)])  # linear warm-up
        assert rates[10] == pytest.approx(0.1)  # the peak, at the end of the warm-up
        assert rates[25] == pytest.approx(0.1 * mid)  # halfway through the decay
        assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
        assert 0 < rates[-1] < 0.01 and after == 0  # the floor, once the last step is taken


def test_one_cycle_has_torch_s_shape():
    epochs, warm, steps = 4, 1, 10
    s = Schedule(steps, one_cycle(epochs, warm))
    rates, after = _rates(s, epochs * steps)
    w = torch.nn.Parameter(torch.ones(1))
    ref = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([w], lr=0.1), max_lr=0.1, total_steps=epochs * steps + 1,
                                              pct_start=warm / epochs, anneal_strategy="cos", cycle_momentum=False,
                                              three_phase=False)
    expected = []
    for _ in range(epochs * steps):
        expected.append(ref.get_last_lr()[0])
        ref.optimizer.step()
        ref.step()
    # torch counts the warm-up to step pct_start * (total - 1); the shapes agree to a fraction of a step.
    assert rates[0] == pytest.approx(0.1 / 25) and max(rates) == pytest.approx(0.1)
    assert rates == pytest.approx(expected, abs=0.012)
    assert after == pytest.approx(0.1 / 25e4)


def test_the_exponential_schedule_steps_once_an_epoch():
    s = Schedule(steps_per_epoch=3, decay=exponential_decay(0.5))
    assert _rates(s, 9)[0] == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)


@pytest.mark.parametrize("decay, floor", [(lambda: linear_decay(10, 1), 0.0), (lambda: cosine_decay(10, 1), 0.0),
                                          (lambda: exponential_decay(0.8), 0.8 ** 10)])
def test_with_a_budget_the_rate_follows_the_elapsed_fraction_and_ends_at_its_floor(decay, floor):
    clock = FakeClock()
    budget = TimeBudget(40.0, clock=clock)
    s = Schedule(steps_per_epoch=7, decay=decay(), warmup_steps=7, budget=budget, epochs=10)
    rates, after = _rates(s, 40, clock, seconds_per_step=1.0)
    for step in range(1, 40):  # the rate of a step follows the time the steps before it took
        t = 10 * step / 40  # the budget stands for 10 epochs
        expected = 0.1 * s.decay(t) * min(1.0, t / 1.0)
        assert rates[step] == pytest.approx(expected), step
    assert budget.over and budget.fraction == 1.0
    assert after == pytest.approx(0.1 * floor)


def test_the_budget_counts_training_time_only_and_resumes_where_it_stopped():
    clock = FakeClock()
    budget = TimeBudget(10.0, clock=clock)
    budget.begin()
    clock.advance(3)
    budget.tick()
    budget.end()
    clock.advance(1000)  # validation, checkpoints: not training
    budget.begin()
    clock.advance(2)
    budget.tick()
    assert budget.now == 5 and not budget.over and budget.fraction == 0.5
    budget.end()
    resumed = TimeBudget(10.0, clock=FakeClock(start=0.0))
    resumed.restore(budget.spent)
    assert resumed.now == resumed.spent == 5
    resumed.begin()
    resumed.clock.advance(5)
    resumed.tick()
    assert resumed.over


def test_the_weight_average_is_the_ema_of_every_step_and_its_state_resumes_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for n in range(1, 6):
        model.train()
        model(torch.randn(8, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))  # the warm-up of the decay
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert ema.model.state_dict()["1.num_batches_tracked"] == 5
    assert all(not p.requires_grad for p in ema.model.parameters())

    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 5
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), ema.model.state_dict().values()))
    assert not math.isnan(float(other.model[0].weight.sum()))
