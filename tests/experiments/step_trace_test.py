"""The step tracer: HLO instructions named, trace events summed per step, and a real step."""

import importlib

import pytest

from gdjax.models import onednn_status

# Lines as XLA's CPU compiler prints them (shortened operands), one instruction each.
HLO = "\n".join(
    [
        "ENTRY %main.41 (p: f32[64], q: f32[9216,4096]) -> (f32[64], f32[9216,4096]) {",
        "  %ffi_call.41 = f32[32,13,13,256]{3,2,1,0} custom-call(%a, %b), custom_call_target="
        '"gdjax_conv_bwd_data", operand_layout_constraints={f32[32,13,13,256]{3,2,1,0}}, '
        'metadata={op_name="jit(train)/transpose(jvp(AlexNet))/conv5/cond/branch_0_fun/ffi_call"'
        " stack_frame_id=72}",
        "  %ynn_fusion.15 = f32[32,4096]{1,0} fusion(%c, %d), kind=kCustom, calls=%fc.15, "
        'metadata={op_name="jit(train)/jvp(AlexNet)/fc6/dot_general"}, '
        'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}',
        "  %dot = f32[9216,4096]{1,0} dot(%e, %f), lhs_contracting_dims={0}, "
        'rhs_contracting_dims={0}, metadata={op_name="jit(train)/transpose(jvp(AlexNet))/fc6/'
        'transpose"}',
        "  %multiply_add_fusion.8 = f32[9216,4096]{1,0} fusion(%dot, %g), kind=kLoop, "
        'calls=%fc.34, metadata={op_name="jit(train)/add"}',
        "  %tuple.3 = (f32[64], /*index=1*/u8[2]{0}) tuple(%h, %i)",
        "  ROOT %copy.2 = f32[64]{0} copy(%p)",
        "}",
    ]
)


@pytest.fixture
def trace():
    return importlib.import_module("step_trace")


def test_hlo_instructions_are_named_by_what_they_do(trace):
    ops = trace.parse_hlo(HLO)
    assert set(ops) == {
        "ffi_call.41",
        "ynn_fusion.15",
        "dot",
        "multiply_add_fusion.8",
        "tuple.3",
        "copy.2",
    }
    assert ops["ffi_call.41"].target == "gdjax_conv_bwd_data"
    assert ops["ffi_call.41"].label == "gdjax_conv_bwd_data conv5"
    assert ops["ffi_call.41"].kind == "oneDNN (gdjax custom calls)"
    assert ops["ynn_fusion.15"].label == "ynn_fusion fc6 fwd"
    assert ops["ynn_fusion.15"].kind == "YNNPACK fusions"
    assert ops["dot"].label == "dot fc6 bwd" and ops["dot"].kind == "XLA dots"
    assert ops["multiply_add_fusion.8"].label == "fusion add"  # the optimizer's update
    assert ops["multiply_add_fusion.8"].kind == "other XLA ops"
    assert ops["tuple.3"].opcode == "tuple"
    assert ops["copy.2"].kind == "copies"


def _x(name, ts, dur, tid):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def test_events_are_summed_per_step_with_overlap_and_idle_time(trace):
    ops = trace.parse_hlo(HLO)
    events = [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "t"}},
        _x("ThunkExecutor::Execute", 0, 10_000, 1),  # bookkeeping: not an op
        _x("ffi_call.41", 0, 4_000, 1),
        _x("copy.2", 1_000, 1_000, 1),  # nested in ffi_call.41 on its thread: counted there
        _x("dot", 3_000, 2_500, 2),  # overlaps ffi_call.41 by 1 ms on another thread
        _x("something_else", 5_000, 9_000, 2),  # not an instruction of this program
        _x("ynn_fusion.15", 8_000, 2_000, 1),  # after 3 ms with no op running
    ]
    out = trace.summarise(events, ops, steps=2)
    assert out["window"] == pytest.approx(5.0)  # 0..10 ms over 2 steps
    assert out["busy"] == pytest.approx(3.75)  # 0..5.5 and 8..10 ms
    assert out["overlap"] == pytest.approx(0.5)  # 3..4 ms
    assert out["idle"] == pytest.approx(1.25)  # 5.5..8 ms
    assert out["by_kind"]["oneDNN (gdjax custom calls)"] == pytest.approx(2.0)
    assert out["by_kind"]["copies"] == 0.0
    assert [r[1] for r in out["rows"]] == ["ffi_call.41", "dot", "ynn_fusion.15"]
    assert out["rows"][0] == ("gdjax_conv_bwd_data conv5", "ffi_call.41", 2.0, 0.5)
    with pytest.raises(RuntimeError, match="no op of the program"):
        trace.summarise([_x("something_else", 0, 1, 1)], ops, steps=1)


@pytest.mark.slow
def test_a_real_step_is_traced_op_by_op(trace, capsys):
    out = trace.main(["--case", "small:32:8", "--steps", "2", "--top", "5", "--timeline"])
    assert 0 < out["busy"] <= out["window"] + 1e-6
    assert out["idle"] == pytest.approx(out["window"] - out["busy"])
    assert sum(out["by_kind"].values()) >= out["busy"] - out["overlap"] - 1e-6
    labels = {r[0] for r in out["rows"]}
    # Per step of the program: each convolution ran once a step (the harness's untimed lead
    # step made it 1.5 a step with --steps 2), and no step was longer than the timed ones by half.
    convs = [r for r in out["rows"] if r[0].startswith(("gdjax_conv", "convolution"))]
    assert convs and all(calls == pytest.approx(1.0) for *_, calls in convs), convs
    if onednn_status()[0]:
        # small fuses its bias and ReLU into the convolutions by default
        assert {"gdjax_conv_bias_relu_fwd conv1", "gdjax_conv_bwd_weights conv1"} <= labels
        assert out["by_kind"]["oneDNN (gdjax custom calls)"] > 0
    printed = capsys.readouterr().out
    assert "ms per step" in printed and "start     end" in printed
    # the timeline is one step: it lists ops (those over 0.3 ms), and each of the custom calls
    # (convolutions, LRN, pooling: each runs once a step) once. A fusion may recur: one of
    # dropout's forward, beside its random bits' `while` loop, was listed twice in one step of
    # a CI run (2026-12-07). (It asked for the step's longest op by its mean over the steps,
    # which can be under 0.3 ms in the last one.)
    timeline = printed[printed.index("start     end") :]
    names = [line.split()[3] for line in timeline.splitlines()[1:]]
    calls = [name for name in names if name.startswith("ffi_call")]
    assert calls and len(calls) == len(set(calls)), timeline


def test_bad_arguments_are_named(trace, capsys):
    for argv, said in (
        (["--case", "small:32"], "argument --case: expected variant:pixels:batch"),
        (["--case", "tiny:32:8"], "argument --case: unknown variant 'tiny'"),
        (["--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_:
            trace.main(argv)
        assert exit_.value.code == 2
        assert said in capsys.readouterr().err
