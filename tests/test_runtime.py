"""The precision policy, as a pure function of hand-made hardware, and the probe that feeds it."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from cnnlab import runtime
from cnnlab.config import PRECISIONS, CifarTrainConfig, FaceTrainConfig
from cnnlab.errors import ConfigError
from cnnlab.runtime import Hardware, autocast, choose_precision, grad_scaler, probe_hardware, select_precision

H200 = Hardware("cuda", "NVIDIA H200", (9, 0))
A100 = Hardware("cuda", "NVIDIA A100-SXM4-40GB", (8, 0))
T4 = Hardware("cuda", "Tesla T4", (7, 5))
V100 = Hardware("cuda", "Tesla V100-SXM2-16GB", (7, 0))
P100 = Hardware("cuda", "Tesla P100-PCIE-16GB", (6, 0))
MPS = Hardware("mps", "Apple GPU")
SAPPHIRE_RAPIDS = Hardware("cpu", "Intel Xeon Platinum 8480+", cpu_bf16=True,
                           cpu_features=("AVX2", "AVX512", "AVX512-BF16", "AVX512-FP16", "AMX-BF16"))
EPYC_ZEN4 = Hardware("cpu", "AMD EPYC", cpu_bf16=True, cpu_features=("AVX2", "AVX512", "AVX512-BF16"))
SKYLAKE = Hardware("cpu", "Intel Xeon Gold 6148", cpu_features=("AVX2", "AVX512"))
LAPTOP = Hardware("cpu", "Intel Core i7-8565U", cpu_features=("AVX2",))


@pytest.mark.parametrize("hw, precision, channels_last", [
    (H200, "bf16", True),
    (A100, "bf16", True),
    (T4, "fp16", True),
    (V100, "fp16", True),
    (P100, "fp32", False),
    (MPS, "fp32", False),
    (SAPPHIRE_RAPIDS, "bf16", True),
    (EPYC_ZEN4, "bf16", True),
    (SKYLAKE, "fp32", runtime._CPU_FP32_CHANNELS_LAST),
    (LAPTOP, "fp32", runtime._CPU_FP32_CHANNELS_LAST),
])
def test_auto_picks_what_the_hardware_runs_fast(hw, precision, channels_last):
    c = choose_precision("auto", None, hw)
    assert (c.precision, c.channels_last) == (precision, channels_last)
    assert c.use_scaler == (precision == "fp16")
    assert c.warning is None  # auto never warns: it is the fast choice
    assert c.reason.startswith("auto: ") and c.reason.endswith(precision + (" + gradient scaling" if c.use_scaler
                                                                           else "") + (" + channels-last"
                                                                                       if channels_last else ""))


def test_the_reason_names_the_fact_that_decided():
    assert choose_precision("auto", None, EPYC_ZEN4).reason == "auto: CPU with AVX512-BF16 -> bf16 + channels-last"
    assert "AMX-BF16" in choose_precision("auto", None, SAPPHIRE_RAPIDS).reason
    assert "without AVX512-BF16 or AMX" in choose_precision("auto", None, LAPTOP).reason
    assert "Tesla T4 (compute capability 7.5" in choose_precision("auto", None, T4).reason
    assert choose_precision("fp32", None, H200).reason.startswith("requested fp32 on NVIDIA H200")


@pytest.mark.parametrize("hw, requested, says, auto", [
    (SKYLAKE, "bf16", "bf16 on this CPU (no AVX512-BF16 or AMX) is emulated", "fp32"),
    (LAPTOP, "bf16", "bf16 on this CPU (no AVX512-BF16 or AMX) is emulated", "fp32"),
    (LAPTOP, "fp16", "fp16 on a CPU without AMX-FP16", "fp32"),
    (EPYC_ZEN4, "fp16", "fp16 on a CPU without AMX-FP16", "bf16"),
    (T4, "bf16", "bf16 on this GPU (compute capability 7.5, no bf16 tensor cores)", "fp16"),
    (P100, "fp16", "compute capability 6.0, no tensor cores", "fp32"),
    (MPS, "bf16", "bf16 on Apple MPS", "fp32"),
])
def test_an_explicit_slow_choice_is_kept_with_one_warning(hw, requested, says, auto):
    c = choose_precision(requested, None, hw)
    assert c.precision == requested  # the user's choice stands
    assert says in c.warning and c.warning.endswith(f"--precision auto would pick {auto}")
    assert c.reason.startswith(f"requested {requested} on ")


@pytest.mark.parametrize("hw", [H200, A100, T4, V100, P100, MPS, SAPPHIRE_RAPIDS, EPYC_ZEN4, SKYLAKE, LAPTOP])
def test_fp32_and_what_auto_picks_never_warn(hw):
    assert choose_precision("fp32", None, hw).warning is None
    assert choose_precision(choose_precision("auto", None, hw).precision, None, hw).warning is None


@pytest.mark.parametrize("hw, requested", [(H200, "fp16"), (A100, "fp16"), (V100, "fp16"),
                                           (EPYC_ZEN4, "bf16"), (MPS, "fp16")])
def test_an_explicit_choice_the_hardware_runs_fast_does_not_warn(hw, requested):
    assert choose_precision(requested, None, hw).warning is None


def test_fp16_warns_on_a_cpu_unless_it_has_amx_fp16():
    granite_rapids = Hardware("cpu", "Intel Xeon 6", cpu_bf16=True, cpu_features=("AVX512", "AMX-BF16", "AMX-FP16"))
    assert choose_precision("fp16", None, granite_rapids).warning is None
    assert "without AMX-FP16" in choose_precision("fp16", None, SAPPHIRE_RAPIDS).warning  # AVX512-FP16 only


def test_channels_last_is_its_own_choice():
    for hw in (H200, T4, EPYC_ZEN4, LAPTOP, MPS):
        for requested in ("auto", "fp32", "bf16", "fp16"):
            assert choose_precision(requested, True, hw).channels_last is True
            assert choose_precision(requested, False, hw).channels_last is False
    # Left to the policy: on for half precision on a GPU, fp32 on a GPU stays NCHW.
    assert choose_precision("fp16", None, H200).channels_last
    assert not choose_precision("fp32", None, H200).channels_last
    assert choose_precision("fp32", None, EPYC_ZEN4).channels_last == runtime._CPU_FP32_CHANNELS_LAST
    assert not choose_precision("fp16", None, MPS).channels_last


def test_an_unknown_precision_is_an_error_about_the_value():
    with pytest.raises(ConfigError, match="precision must be auto, fp32, bf16, fp16; got 'fp8'"):
        choose_precision("fp8", None, H200)


def test_select_precision_logs_the_warning_once(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "probe_hardware", lambda device: LAPTOP)
    with caplog.at_level(logging.WARNING, logger="cnnlab.runtime"):
        c = select_precision(torch.device("cpu"), "bf16", None)
        assert [r.getMessage() for r in caplog.records] == [c.warning]
        caplog.clear()
        select_precision(torch.device("cpu"), "auto", None)
        select_precision(torch.device("cpu"), "fp32", True)
    assert caplog.records == []


@pytest.fixture
def uncapped(monkeypatch):
    """No cap on oneDNN's instructions from the environment the tests were started in."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)


def test_probe_reads_this_cpu(uncapped):
    hw = probe_hardware(torch.device("cpu"))
    assert hw.device_type == "cpu" and hw.name
    assert hw.cpu_bf16 == any(f in hw.cpu_features for f in ("AVX512-BF16", "AMX-BF16"))
    caps = torch.cpu.get_capabilities()
    assert ("AVX512-BF16" in hw.cpu_features) == bool(caps.get("avx512_bf16"))
    assert runtime.device_name(torch.device("cpu")) == f"cpu ({hw.name})"


def test_probe_falls_back_on_proc_cpuinfo_without_torch_capabilities(monkeypatch, uncapped):
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: ("AMD EPYC 9654", {"avx2", "avx512f", "avx512_bf16", "sse2"}))
    hw = probe_hardware(torch.device("cpu"))
    assert hw == Hardware("cpu", "AMD EPYC 9654", cpu_bf16=True, cpu_features=("AVX2", "AVX512", "AVX512-BF16"))
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: ("", {"avx2"}))
    hw = probe_hardware(torch.device("cpu"))
    assert not hw.cpu_bf16 and hw.cpu_features == ("AVX2",) and hw.name  # platform's name stands in


def test_cpuinfo_parsing(tmp_path, monkeypatch):
    text = ("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\nflags\t\t: fpu avx2 avx512_bf16\n\n"
            "processor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\nflags\t\t: fpu avx2 avx512_bf16\n")
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(runtime, "_CPUINFO", tmp_path / "cpuinfo")
    assert runtime._cpuinfo() == ("AMD EPYC 9654 96-Core Processor", {"fpu", "avx2", "avx512_bf16"})
    monkeypatch.setattr(runtime, "_CPUINFO", tmp_path / "missing")
    assert runtime._cpuinfo() == ("", set())


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                              ("fp32", torch.float32)])
def test_autocast_and_scaler_train_a_step_on_the_cpu(precision, dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([0, 1])
    scaler = grad_scaler(torch.device("cpu"), precision)
    assert scaler.is_enabled() == (precision == "fp16")
    with autocast(torch.device("cpu"), precision):
        out = conv(x)
        loss = F.cross_entropy(out.mean((2, 3))[:, :2].float(), y)
    assert out.dtype == dtype
    before = conv.weight.detach().clone()
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(conv.weight).all() and not torch.equal(conv.weight, before)


def test_fp16_is_a_precision_of_both_configs():
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert CifarTrainConfig(precision="fp16").precision == "fp16"
    assert FaceTrainConfig(precision="fp16").precision == "fp16"
    with pytest.raises(ConfigError, match="^precision: expected"):
        CifarTrainConfig(precision="fp8")
    for cls in (CifarTrainConfig, FaceTrainConfig):
        fields = {f.name: f.metadata["help"] for f in cls.__dataclass_fields__.values()}
        assert "fp16" in fields["precision"] and "auto" in fields["precision"]
        assert "auto" in fields["channels_last"] or "default" in fields["channels_last"]


@pytest.mark.parametrize("cap, usable", [
    ("", ("AVX2", "AVX512", "AVX512-BF16", "AMX-BF16")),
    ("ONEDNN_MAX_CPU_ISA=AVX2", ("AVX2",)),
    ("ONEDNN_MAX_CPU_ISA=avx2_vnni", ("AVX2",)),
    ("ONEDNN_MAX_CPU_ISA=AVX512_CORE", ("AVX2", "AVX512")),
    ("DNNL_MAX_CPU_ISA=AVX512_CORE_BF16", ("AVX2", "AVX512", "AVX512-BF16")),
    ("ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX", ("AVX2", "AVX512", "AVX512-BF16", "AMX-BF16")),
    ("ONEDNN_MAX_CPU_ISA=SSE41", ()),
    ("ONEDNN_MAX_CPU_ISA=ALL", ("AVX2", "AVX512", "AVX512-BF16", "AMX-BF16")),
])
def test_a_onednn_cap_takes_away_the_extensions_above_it(cap, usable):
    assert runtime.capped_features(("AVX2", "AVX512", "AVX512-BF16", "AMX-BF16"), cap) == usable


def test_the_cap_is_read_from_onednns_variables():
    assert runtime.cpu_isa_cap({"ONEDNN_MAX_CPU_ISA": " AVX2 "}) == "ONEDNN_MAX_CPU_ISA=AVX2"
    assert runtime.cpu_isa_cap({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "DNNL_MAX_CPU_ISA=AVX512_CORE"
    assert runtime.cpu_isa_cap({"ONEDNN_MAX_CPU_ISA": "", "ATEN_CPU_CAPABILITY": "avx2"}) == ""


@pytest.fixture
def zen4(monkeypatch, uncapped):
    """This process on an AMD EPYC with AVX512-BF16, as /proc/cpuinfo describes it."""
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: ("AMD EPYC 9654", {"avx2", "avx512f", "avx512_bf16"}))
    return monkeypatch


def test_with_onednn_capped_to_avx2_the_policy_sees_no_native_bf16(zen4):
    zen4.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    hw = probe_hardware(torch.device("cpu"))
    assert hw == Hardware("cpu", "AMD EPYC 9654", cpu_bf16=False, cpu_features=("AVX2",),
                          cpu_limit="ONEDNN_MAX_CPU_ISA=AVX2")
    auto = choose_precision("auto", None, hw)
    assert auto.precision == "fp32" and "(ONEDNN_MAX_CPU_ISA=AVX2)" in auto.reason
    bf16 = choose_precision("bf16", None, hw)
    assert "no AVX512-BF16 or AMX under ONEDNN_MAX_CPU_ISA=AVX2" in bf16.warning and "up to 10x" in bf16.warning
    zen4.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert "about 2x" in choose_precision("bf16", None, probe_hardware(torch.device("cpu"))).warning


def test_a_cap_that_takes_nothing_away_and_atens_own_cap_change_nothing(zen4):
    zen4.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    zen4.setenv("ATEN_CPU_CAPABILITY", "avx2")  # ATen's elementwise kernels; the convolutions are oneDNN's
    hw = probe_hardware(torch.device("cpu"))
    assert hw == Hardware("cpu", "AMD EPYC 9654", cpu_bf16=True, cpu_features=("AVX2", "AVX512", "AVX512-BF16"))
    assert choose_precision("auto", None, hw).precision == "bf16"
