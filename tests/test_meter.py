"""DeviceMeter: per-key means over the steps that logged the key, per-step traces, one read."""
import pytest
import torch

from avbalance.meter import DeviceMeter


def test_each_key_is_averaged_over_its_own_steps():
    m = DeviceMeter()
    m.add({"a": torch.tensor(1.0), "b": torch.tensor(10.0)})
    m.add({"a": torch.tensor(2.0)})
    m.add({"a": torch.tensor(6.0), "b": torch.tensor(20.0)})
    means, traces = m.read()
    assert means == {"a": pytest.approx(3.0), "b": pytest.approx(15.0)}
    assert traces == {}
    assert m.counts == {"a": 3, "b": 2}


def test_two_trace_keys_keep_their_own_order():
    m = DeviceMeter(("r", "k", "never"))
    m.add({"k": torch.tensor(0.5), "r": torch.tensor(1.0), "loss": torch.tensor(9.0)})
    m.add({"r": torch.tensor(2.0)})
    m.add({"k": torch.tensor(0.25), "r": torch.tensor(4.0)})
    means, traces = m.read()
    assert traces == {"r": [1.0, 2.0, 4.0], "k": [0.5, 0.25], "never": []}
    assert means == {"k": pytest.approx(0.375), "r": pytest.approx(7 / 3), "loss": pytest.approx(9.0)}
    assert "loss" not in traces


def test_empty_meter_reads_empty():
    assert DeviceMeter().read() == ({}, {})
    assert DeviceMeter(("r",)).read() == ({}, {"r": []})


def test_values_are_copied_detached_and_float():
    m = DeviceMeter(("x",))
    first = torch.tensor(2.0)
    m.add({"x": first, "n": torch.tensor(3)})   # an integer tensor is averaged as a float
    first.add_(100.0)                           # the caller reuses its tensor in place
    w = torch.tensor(4.0, requires_grad=True)
    m.add({"x": w * 1.0, "n": torch.tensor(4)})
    assert not m.sums["x"].requires_grad and m.sums["x"].dtype == torch.float32
    means, traces = m.read()
    assert means["x"] == pytest.approx(3.0) and means["n"] == pytest.approx(3.5)
    assert len(traces["x"]) == 2 and traces["x"][1] == 4.0
    assert isinstance(means["n"], float)


def test_a_logged_value_is_not_the_running_sum():
    m = DeviceMeter()
    one = torch.ones(())  # methods log one shared tensor every step (Method.one)
    for _ in range(3):
        m.add({"k": one})
    assert one.item() == 1.0
    assert m.read()[0] == {"k": 1.0}
