"""The TensorRT stand-in itself: its names come from the real 11.4 bindings, it refuses the rest,
and Polygraphy's real loaders and runner work over it."""

from __future__ import annotations

import ctypes
import inspect
import os
import re
import sys

import numpy as np
import onnx
import pytest

from pipeline import ortsession
from tests import graphs
from tests.trt_standin import _strict, plan, standin
from tests.trt_standin import tensorrt as trt_standin
from tests.trt_standin.cuda import CUDART_FUNCTIONS, NotInCuda


def _profile(model: onnx.ModelProto, lo: int = 1, opt: int = 4, hi: int = 8):
    from polygraphy.backend.trt import Profile

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    name = model.graph.input[0].name
    return Profile().add(name, min=(lo, *shape), opt=(opt, *shape), max=(hi, *shape))


def _build(path, verbosity="DETAILED"):
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    model = onnx.load(str(path))
    config = CreateConfig(profiles=[_profile(model)], profiling_verbosity=getattr(trt.ProfilingVerbosity, verbosity))
    return bytes(EngineBytesFromNetwork(NetworkFromOnnxPath(str(path), strongly_typed=True), config=config)())


# --- where the names come from -------------------------------------------------------------------


def test_names_come_from_the_real_11_4_wheel():
    source = _strict.NAMES["extracted_from"]
    assert _strict.VERSION == "11.4.0.106"
    assert source["wheel"] == "tensorrt_cu13_bindings-11.4.0.106-cp311-none-manylinux_2_28_x86_64.whl"
    assert re.fullmatch(r"[0-9a-f]{64}", source["wheel_sha256"])
    # The builder flags the 11.4 wheel binds, as docs/tensorrt11.md lists them: no precision flags.
    flags = set(_strict.CLASSES["BuilderFlag"]["members"])
    assert {"TF32", "DEBUG", "REFIT", "STRICT_NANS"} <= flags
    assert not flags & {"FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
    assert (
        "IInt8EntropyCalibrator2" not in _strict.MODULE
        and "int8_calibrator" not in _strict.CLASSES["IBuilderConfig"]["attrs"]
    )
    assert _strict.CLASSES["ITensor"]["attrs"]["dtype"] == {"kind": "property", "writable": False}
    # Every overload's signature, from pybind11's "Overloaded function." docstrings (they read
    # "name(*args, **kwargs)" on their first line, which is all the names file used to keep).
    assert _strict.CLASSES["IExecutionContext"]["attrs"]["set_input_shape"]["signatures"] == [
        "set_input_shape(self: IExecutionContext, name: str, shape: tuple) -> bool",
        "set_input_shape(self: IExecutionContext, name: str, shape: list) -> bool",
        "set_input_shape(self: IExecutionContext, name: str, shape: Dims) -> bool",
    ]
    kept = [s for c in _strict.CLASSES.values() for a in c["attrs"].values() for s in a.get("signatures", [])]
    assert kept and not [s for s in kept if "*args" in s]
    assert _strict.CLASSES["Dims"]["special"]["__eq__"] == [
        "__eq__(self: Dims, arg0: list) -> bool",
        "__eq__(self: Dims, arg0: tuple) -> bool",
    ]
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaGetDeviceCount"} <= CUDART_FUNCTIONS


def _own_names(cls: type) -> set[str]:
    return {n for n in vars(cls) if not n.startswith("_si_") and n not in _strict._OBJECT and n != "_bool"}


def test_stand_in_defines_only_names_the_real_bindings_have():
    module_names = {n for n in vars(trt_standin) if not n.startswith("_") and n not in ("annotations",)}
    imported = {"json", "sys", "time", "types", "warnings", "np", "onnx", "Any"}
    assert module_names - imported - set(_strict.MODULE) == set()
    for value in vars(trt_standin).values():
        if isinstance(value, type) and "_si_name" in vars(value) and value._si_name != "pybind11_object":
            real = set(_strict.CLASSES[value._si_name]["attrs"])
            assert _own_names(value) - real == set(), value._si_name


def _real_parameters(signature: str) -> list[str]:
    inside = signature[signature.index("(") + 1 : signature.rindex(")")]
    inside = inside.split(") ->")[0]
    names = []
    depth = 0
    current = ""
    for ch in inside:  # split on top-level commas only (types like list[Dims] hold none, Callables might)
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    names.append(current)
    return [n.split(":")[0].split("=")[0].strip() for n in names if n.strip() and n.strip() not in ("/", "*")]


def test_method_parameters_match_the_real_signatures():
    checked = 0
    for value in vars(trt_standin).values():
        if not (isinstance(value, type) and "_si_name" in vars(value)) or value._si_name not in _strict.CLASSES:
            continue
        real = _strict.CLASSES[value._si_name]["attrs"]
        for name, member in vars(value).items():
            if name.startswith("_") or not callable(member) or name not in real:
                continue
            signatures = [s for s in real[name].get("signatures", []) if "*args" not in s]
            if not signatures:
                continue  # bound with a custom docstring: no parameter names to compare
            ours = list(inspect.signature(member).parameters)
            assert any(_real_parameters(s) == ours for s in signatures), (value._si_name, name, ours, signatures)
            checked += 1
    assert checked >= 40


# --- refusing --------------------------------------------------------------------------------------


def test_refuses_names_the_real_11_4_bindings_lack(tmp_path):
    with standin(tmp_path) as si:
        import tensorrt as trt

        with pytest.raises(AttributeError, match=r"BuilderFlag.FP16: not in the TensorRT 11.4.0.106"):
            trt.BuilderFlag.FP16  # noqa: B018
        assert not hasattr(trt, "IInt8EntropyCalibrator2")
        config = trt.Builder(trt.Logger()).create_builder_config()
        with pytest.raises(AttributeError):
            config.int8_calibrator = None
        with pytest.raises(AttributeError, match="read-only"):
            config.num_optimization_profiles = 2
        assert si.refused == ["BuilderFlag.FP16", "tensorrt.IInt8EntropyCalibrator2", "IBuilderConfig.int8_calibrator"]


def test_refuses_a_call_that_binds_to_no_real_overload(tmp_path):
    model = graphs.residual()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with standin(tmp_path / "machine") as si:
        import tensorrt as trt
        from polygraphy import cuda
        from polygraphy.backend.trt import EngineFromBytes

        context = EngineFromBytes(_build(path))().create_execution_context()
        with pytest.raises(TypeError, match=r"set_input_shape\(\): incompatible function arguments") as refused:
            context.set_input_shape("x", 8)  # a batch size, not a shape
        assert "2. (self: IExecutionContext, name: str, shape: list) -> bool" in str(refused.value)
        # Each real overload binds: a tuple, a list, a Dims, by keyword too.
        assert context.set_input_shape("x", (2, 16, 8, 8)) and context.set_input_shape("x", [2, 16, 8, 8])
        assert context.set_input_shape(name="x", shape=trt.Dims([2, 16, 8, 8]))
        stream = cuda.Stream()
        with pytest.raises(TypeError, match=r"execute_async_v3\(\): incompatible function arguments"):
            context.execute_async_v3(stream)  # the Polygraphy Stream, not its handle (stream.ptr)
        stream.free()
        with pytest.raises(TypeError, match="No constructor defined"):
            trt.ICudaEngine()  # made only by deserializing a plan
        with pytest.raises(TypeError, match=r"__init__\(\): incompatible function arguments"):
            trt.Builder()  # needs its logger
        assert [r for r in si.refused if r not in POLYGRAPHY_PROBES] == [
            "IExecutionContext.set_input_shape()",
            "IExecutionContext.execute_async_v3()",
            "Builder.__init__()",
        ]


def test_dims_is_a_dims_not_a_tuple(tmp_path):
    with standin(tmp_path):
        import tensorrt as trt

        dims = trt.Dims([4, 16, 8, 8])
        assert not isinstance(dims, tuple) and len(dims) == 4 and dims[0] == 4 and dims[-1] == 8
        assert dims[1:] == (16, 8, 8) and tuple(dims) == (4, 16, 8, 8) and list(dims) == [4, 16, 8, 8]
        assert dims == (4, 16, 8, 8) and dims == [4, 16, 8, 8] and dims != (4, 16)
        with pytest.raises(TypeError, match="unhashable"):
            hash(dims)
        with pytest.raises(TypeError, match=r"__eq__\(\): incompatible function arguments"):
            dims == trt.Dims([4, 16, 8, 8])  # noqa: B015 - the real __eq__ takes a list or a tuple only
        with pytest.raises(IndexError, match="Out of bounds"):
            dims[4]  # noqa: B018
        with pytest.raises(TypeError, match="incompatible function arguments"):
            trt.Dims("4x16")


def test_a_real_name_the_stand_in_lacks_is_loud_not_an_attribute_error(tmp_path):
    with standin(tmp_path):
        import tensorrt as trt

        builder = trt.Builder(trt.Logger())
        with pytest.raises(_strict.StandInGap, match="Builder.build_engine_with_config exists in TensorRT"):
            hasattr(builder, "build_engine_with_config")


def test_restores_everything_and_refuses_use_afterwards(tmp_path):
    before = (sys.modules.get("tensorrt"), ctypes.CDLL, os.environ.get("LD_LIBRARY_PATH"), list(sys.path))
    with standin(tmp_path, cudart="pip-cu13"):
        import tensorrt as trt

        logger = trt.Logger()
    assert (sys.modules.get("tensorrt"), ctypes.CDLL, os.environ.get("LD_LIBRARY_PATH"), list(sys.path)) == before
    with pytest.raises(_strict.StandInInactive):
        trt_standin.Builder  # noqa: B018
    with pytest.raises(_strict.StandInInactive):
        logger.min_severity  # noqa: B018


def test_cuda_runtime_refuses_unknown_functions_and_foreign_memory(tmp_path):
    from polygraphy import cuda

    with standin(tmp_path) as si:
        handle = cuda.wrapper().handle
        with pytest.raises(NotInCuda, match="undefined symbol: cudaMallocDevice"):
            handle.cudaMallocDevice  # noqa: B018
        assert si.refused_cuda == ["cudaMallocDevice"]
        host = np.arange(6, dtype=np.float32)
        with cuda.DeviceArray(shape=(6,), dtype=np.float32) as device:
            device.copy_from(host)
            assert np.array_equal(device.numpy(), host)
            ptr = device.ptr
        # After the free, a copy into that memory fails as on a GPU (cudaErrorInvalidValue).
        assert handle.cudaMemcpy(ctypes.c_void_p(ptr), ctypes.c_void_p(host.ctypes.data), ctypes.c_size_t(24), 1) == 1


# --- Polygraphy's loaders and runner over the stand-in ------------------------------------------------


def test_polygraphy_builds_and_runs_an_engine_that_matches_onnx_runtime(tmp_path):
    from tests.test_quantize import quantize

    model = graphs.residual()
    _, w8a8 = quantize(model)
    path = tmp_path / "w8a8.onnx"
    onnx.save(w8a8, str(path))
    feed = graphs.inputs_for(model, 3, seed=5)
    with standin(tmp_path / "machine") as si:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        engine = EngineFromBytes(_build(path))()
        with TrtRunner(engine, optimization_profile=0) as runner:
            got = runner.infer({"x": feed["x"].astype(np.float32)})
        layers = plan.deserialize(engine.serialize())[0]["layers"]
    expected = ortsession.run(ortsession.session(w8a8, cpu_only=True), feed)[0]
    (name,) = got
    assert np.allclose(np.asarray(got[name], dtype=np.float32), expected, atol=1e-3)
    convs = {layer["Name"]: layer for layer in layers if layer["LayerType"] == "CaskConvolution"}
    assert {n: c["Inputs"][0]["Datatype"] for n, c in convs.items()} == {"conv1": "Int8", "conv2": "Int8"}
    assert convs["conv1"]["Metadata"] == "[ONNX Layer: conv1]"
    # Only Polygraphy's own version probes touched names TensorRT 11 lacks (see POLYGRAPHY_PROBES).
    assert set(si.refused) <= POLYGRAPHY_PROBES


# Names Polygraphy 0.53.6 probes for inside try/except or hasattr, to support TensorRT < 11.
POLYGRAPHY_PROBES = {
    "ILayer.precision_is_set",  # backend/trt/config.py: layer precisions, in try/except AttributeError
    "IBuilderConfig.int8_calibrator",  # backend/trt/util.py: try_setup_polygraphy_calibrator, str_from_config
    "tensorrt.QuantizationFlag",  # backend/trt/util.py: str_from_config, contextlib.suppress(AttributeError)
}


def test_attention_fuses_into_one_myelin_layer_reporting_its_onnx_nodes():
    from tests.test_quantize import quantize

    _, w8a8 = quantize(graphs.attention())
    layers = plan.layers(w8a8, 4)
    (mha,) = [layer for layer in layers if layer["LayerType"] == "kgen"]
    nodes = re.findall(r"\[ONNX Layer: ([^\]]+)\]", mha["Metadata"])
    assert [n for n in nodes if "quantize" not in n.lower()] == ["qk", "softmax", "av"]
    # It swallowed the Q/DQ on both batched MatMuls' inputs, and reports what enters it: Half, as
    # NVIDIA/TensorRT#4397 shows Myelin's layers (it used to report Int8, modelled by hand).
    assert {"q_DequantizeLinear", "kt_DequantizeLinear", "probs_DequantizeLinear", "v_DequantizeLinear"} <= set(nodes)
    assert len(nodes) == len(set(nodes)) and {t["Datatype"] for t in mha["Inputs"]} == {"Half"}


def test_a_foreign_node_region_swallows_the_projections_and_their_qdq():
    from tests.test_quantize import quantize

    _, w8a8 = quantize(graphs.attention())
    layers = plan.layers(w8a8, 4, myelin="foreign-node")
    (region,) = [layer for layer in layers if layer["LayerType"] == "Myelin"]
    assert region["Name"].startswith("{ForeignNode[") and [t["Datatype"] for t in region["Inputs"]] == ["Half"]
    nodes = set(re.findall(r"\[ONNX Layer: ([^\]]+)\]", region["Metadata"]))
    assert {"proj_q", "proj_k", "proj_v", "qk", "av", "x.fp16_DequantizeLinear"} <= nodes
    assert not [layer for layer in layers if layer["LayerType"] == "CaskGemmMatrixMultiply"]


def test_a_cast_between_float_types_is_a_reformat_layer():
    from tests.test_quantize import quantize

    _, w8a8 = quantize(graphs.residual())
    reformats = [layer for layer in plan.layers(w8a8, 4) if layer["LayerType"] == "Reformat"]
    assert [(r["Name"], r["Inputs"][0]["Datatype"], r["Outputs"][0]["Datatype"]) for r in reformats] == [
        ("Reformatting CopyNode for Input Tensor 0 to x.fp16_QuantizeLinear", "Float", "Half"),
        ("Reformatting CopyNode for Output Tensor 0 to relu2", "Half", "Float"),
    ]


def test_the_builder_refuses_float_inputs_of_different_types(tmp_path):
    """TensorRT 11 builds strongly typed networks only: it inserts no cast where Float meets Half."""
    from onnx import TensorProto, helper

    from pipeline.config import BuildSection
    from pipeline.errors import PipelineError
    from pipeline.targets.tensorrt.profiles import InputProfile
    from pipeline.targets.tensorrt.trt import EngineFromOnnx

    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Add", ["x", "x16"], ["y"], name="mixed_add"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    model = helper.make_model(helper.make_graph(nodes, "mixed", [x], [y]), opset_imports=[helper.make_opsetid("", 19)])
    path = tmp_path / "mixed.onnx"
    onnx.save(model, str(path))
    profiles = [[InputProfile("x", (1, 4), (2, 4), (4, 4))]]
    with standin(tmp_path / "machine"), pytest.raises(PipelineError) as refused:
        EngineFromOnnx(profiles, BuildSection(), tmp_path / "timing.cache")(path)
    assert "TensorRT could not build an engine from it: " in str(refused.value)
    assert "(mixed_add: inputs of different types (Float and Half) in a strongly typed network" in str(refused.value)
