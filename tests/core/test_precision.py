"""Precision and layout: what --precision auto resolves to per machine, what artifacts record, and that
channels_last and the teachers' bf16 forward compute what fp32 in the plain layout does."""

import pytest
import torch

from fedinv import runtime
from fedinv.errors import ConfigError
from fedinv.federated.local import cpu_state
from fedinv.models import build_model, place
from fedinv.runtime import precision_name, ran_on, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_is_bf16_exactly_on_a_cpu_that_computes_it(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: native)
    assert resolve_precision("auto", CPU) is expected
    assert resolve_precision("auto", CUDA) is torch.float16  # with a GradScaler, whatever the CPU
    assert resolve_precision("auto", torch.device("mps")) is None
    assert resolve_precision("fp32", CPU) is None and resolve_precision("bf16", CPU) is torch.bfloat16
    assert resolve_precision("bf16", CUDA) is torch.bfloat16


def test_explicit_precisions_are_checked():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision .fp8.; known: auto, bf16, fp16, fp32"):
        resolve_precision("fp8", CPU)


def test_bf16_detection_follows_what_torch_reports_else_the_cpu_flags(monkeypatch):
    for caps, expected in (({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx512_bf16": False}, True),
                           ({"avx512_bf16": False, "amx_bf16": False, "amx_tile": True}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps, raising=False)
        runtime.cpu_computes_bf16.cache_clear()
        try:
            assert runtime.cpu_computes_bf16() is expected
        finally:
            runtime.cpu_computes_bf16.cache_clear()
    assert runtime.bf16_flags("flags\t\t: fpu sse avx512f avx512_bf16\n")
    assert runtime.bf16_flags("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not runtime.bf16_flags("flags\t\t: fpu sse avx2 avx512f amx_tile\n")


def test_what_artifacts_record():
    assert ran_on(CPU, torch.bfloat16) == {"device": "cpu", "precision": "bf16"}
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_channels_last_changes_the_layout_not_the_function():
    torch.manual_seed(0)
    plain = build_model("bncnn", 3, 10, 16).eval()
    placed = place(build_model("bncnn", 3, 10, 16), "cpu").eval()
    placed.load_state_dict(plain.state_dict())
    conv = next(p for p in placed.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(placed(x), plain(x), rtol=1e-4, atol=1e-5)
    # what leaves a node (and what a checkpoint stores) is in the plain layout again
    assert all(t.is_contiguous() for t in cpu_state(placed).values())


def test_a_bf16_step_trains_with_fp32_weights_and_agrees_with_fp32():
    torch.manual_seed(0)
    model = place(build_model("bncnn", 1, 10, 16), "cpu")
    x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))
    with torch.no_grad():
        ref = model.eval()(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert (low.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
