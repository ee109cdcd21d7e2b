"""TEST DOUBLE of the ``tensorrt`` module (TensorRT 11.4), for CPU tests only; never shipped.

It implements what trtpipe and Polygraphy 0.53's TensorRT loaders and runner touch, and refuses
any name the real 11.4 bindings do not have (see ``_strict.py``). A build records the ONNX
graph and the layers TensorRT would report (``plan.py``); an engine runs that graph on ONNX
Runtime, reading and writing the stand-in GPU's memory (``cuda.py``) at the addresses set on
the execution context. Installed as ``sys.modules["tensorrt"]`` only by ``standin()``.
"""

from __future__ import annotations

import json
import sys
import time
import types
import warnings
from typing import Any

import numpy as np
import onnx

from tests.trt_standin import _signatures, _strict
from tests.trt_standin import plan as _plan
from tests.trt_standin._strict import CLASSES as _CLASSES
from tests.trt_standin._strict import MODULE as _MODULE
from tests.trt_standin._strict import Strict as _Strict
from tests.trt_standin._strict import StrictType as _StrictType

__version__ = _strict.VERSION
_bool = bool  # the module defines `bool` (DataType.BOOL), as the real one does

# Knobs a test may turn (through ``standin(...)``); the defaults are TensorRT 11's documented behaviour.
_si_options = {
    "gpu": None,  # tests.trt_standin.cuda.Gpu, set by standin()
    # "engine": the engine JSON lists "Layers"; "per-layer": it does not, get_layer_information(i) gives
    # each (both are 11.4 API); "unknown": neither is in a layout trtpipe reads.
    "inspector_layout": "engine",
    "myelin": "kgen",  # how fused regions report: "kgen" (attention) or "foreign-node" (with its projections)
}


# --- enums, generated from the names file with the real members and values ---------------------


class _Enum(_Strict):
    _si_name = "pybind11_object"

    def __init__(self, name: str, value: int) -> None:
        object.__setattr__(self, "_si_member", name)
        object.__setattr__(self, "_si_value", value)

    @property
    def name(self) -> str:
        return self._si_member

    @property
    def value(self) -> int:
        return self._si_value

    def __int__(self) -> int:
        return self._si_value

    def __index__(self) -> int:
        return self._si_value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._si_value == self._si_value

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, self._si_value))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__}.{self._si_member}: {self._si_value}>"

    def __str__(self) -> str:
        return f"{type(self).__qualname__}.{self._si_member}"


def _make_enum(qualname: str) -> type:
    spec = _CLASSES[qualname]
    cls = _StrictType(
        qualname.rsplit(".", 1)[-1],
        (_Enum,),
        {"_si_name": qualname, "__qualname__": qualname, "__module__": "tensorrt"},
    )
    members = {}
    for name, value in spec["members"].items():
        member = object.__new__(cls)
        _Enum.__init__(member, name, value)
        members[name] = member
        type.__setattr__(cls, name, member)
    type.__setattr__(cls, "__members__", members)
    return cls


_ENUMS = {name: _make_enum(name) for name, spec in _CLASSES.items() if "members" in spec}


def _member(enum: str, name: str):
    """An enum member, looked up without the checks that guard outside callers."""
    return type.__getattribute__(_ENUMS[enum], "__members__")[name]


for _name, _cls in _ENUMS.items():
    if "." not in _name:
        globals()[_name] = _cls

DataType = _ENUMS["DataType"]
type.__setattr__(
    DataType,
    "itemsize",
    property(
        lambda self: {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1}.get(
            self.name
        )
    ),
)
for _name, _spec in _MODULE.items():  # float32, float16, ... are DataType members
    if _spec["kind"] == "value" and _spec.get("type") == "DataType":
        globals()[_name] = _member("DataType", _spec["member"])
_Severity = _ENUMS["ILogger.Severity"]
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64}
_NUMPY.update({"BOOL": np.bool_, "UINT8": np.uint8})


def _dtype(name: str):
    return _member("DataType", name)


# --- small value classes ------------------------------------------------------------------------


class Dims(_Strict):
    """A shape, as the real ``Dims`` is one: no tuple, but indexable (an int gives an int, a slice a
    tuple), iterable by index, of a length, equal to a tuple or list of the same values; unhashable,
    and comparing it with another ``Dims`` raises (its ``__eq__`` takes a list or a tuple only)."""

    _si_name = "Dims"
    __hash__ = None  # the real one defines __eq__ alone

    def __init__(self, shape=()) -> None:
        values = tuple(int(v) for v in shape)
        if len(values) > 8:
            raise ValueError(f"Input length {len(values)}. Max expected length is 8")
        self._si_values = values

    @property
    def MAX_DIMS(self) -> int:  # noqa: N802 - the real name
        return 8

    def __len__(self) -> int:
        return len(self._si_values)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._si_values[index]
        if not isinstance(index, int) or not -len(self._si_values) <= index < len(self._si_values):
            raise IndexError("Out of bounds")
        return self._si_values[index]

    def __setitem__(self, index, value) -> None:
        values = list(self._si_values)
        values[index] = value if isinstance(index, int) else list(value)
        self._si_values = tuple(int(v) for v in values)

    def __eq__(self, other) -> bool:
        if not isinstance(other, list | tuple):
            raise _signatures.incompatible("Dims", "__eq__", _CLASSES["Dims"]["special"]["__eq__"], (self, other), {})
        return list(self._si_values) == [int(v) for v in other]

    def __repr__(self) -> str:
        return repr(self._si_values)

    __str__ = __repr__


class IHostMemory(bytes, _Strict):
    """Serialized engine or timing cache: supports the buffer protocol, like the real one."""

    _si_name = "IHostMemory"

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self):
        return _dtype("UINT8")

    def __enter__(self):
        warnings.warn(
            "Context managers for TensorRT types are deprecated. "
            "Memory will be freed automatically when the reference count reaches 0.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self

    def __exit__(self, *exc) -> None:
        return None


class ILogger(_Strict):
    _si_name = "ILogger"

    def __init__(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class Logger(ILogger):
    _si_name = "Logger"

    def __init__(self, min_severity=None) -> None:
        self._si_min = min_severity if min_severity is not None else _member("ILogger.Severity", "WARNING")

    @property
    def min_severity(self):
        return self._si_min

    @min_severity.setter
    def min_severity(self, value) -> None:
        self._si_min = value

    def log(self, severity, msg: str) -> None:
        if int(severity) <= int(self._si_min):
            print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)


for _cls in (ILogger, Logger):
    type.__setattr__(_cls, "Severity", _Severity)
    for _severity, _value in type.__getattribute__(_Severity, "__members__").items():
        type.__setattr__(_cls, _severity, _value)


def _log(logger, severity: str, message: str) -> None:
    logger.log(_member("ILogger.Severity", severity), message)


def init_libnvinfer_plugins(logger, namespace: str) -> bool:
    return True


def volume(iterable) -> int:
    out = 1
    for v in iterable:
        out *= v
    return out


def nptype(trt_type):
    if trt_type.name in _NUMPY:
        return _NUMPY[trt_type.name]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


class IOutputAllocator(_Strict):
    """Base of user output allocators: TensorRT calls ``reallocate_output_async``/``notify_shape``."""

    _si_name = "IOutputAllocator"

    def __init__(self) -> None:
        pass


class IDebugListener(_Strict):
    _si_name = "IDebugListener"

    def __init__(self) -> None:
        pass


# --- network definition and ONNX parser -------------------------------------------------------------


class ITensor(_Strict):
    _si_name = "ITensor"

    def __init__(self, name: str, dtype, shape, is_input: bool) -> None:
        self._si_tensor = (name, dtype, Dims(shape), is_input)

    name = property(lambda self: self._si_tensor[0])
    dtype = property(lambda self: self._si_tensor[1])
    shape = property(lambda self: self._si_tensor[2])
    is_network_input = property(lambda self: self._si_tensor[3])
    is_network_output = property(lambda self: not self._si_tensor[3])
    is_shape_tensor = property(lambda self: False)
    is_execution_tensor = property(lambda self: True)
    location = property(lambda self: _member("TensorLocation", "DEVICE"))


_LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "ConvTranspose": "DECONVOLUTION",
    "Gemm": "MATRIX_MULTIPLY",
    "MatMul": "MATRIX_MULTIPLY",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
    "Softmax": "SOFTMAX",
    "Cast": "CAST",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Constant": "CONSTANT",
    "Shape": "SHAPE",
    "Gather": "GATHER",
    "Concat": "CONCATENATION",
    "ReduceMean": "REDUCE",
    "LayerNormalization": "NORMALIZATION",
    "Relu": "ACTIVATION",
}


class ILayer(_Strict):
    _si_name = "ILayer"

    def __init__(self, node: onnx.NodeProto) -> None:
        self._si_node = node

    name = property(lambda self: self._si_node.name)
    type = property(lambda self: _member("LayerType", _LAYER_TYPES.get(self._si_node.op_type, "ELEMENTWISE")))
    num_inputs = property(lambda self: len(self._si_node.input))
    num_outputs = property(lambda self: len(self._si_node.output))
    metadata = property(lambda self: f"[ONNX Layer: {self._si_node.name}]")


class INetworkDefinition(_Strict):
    _si_name = "INetworkDefinition"

    def __init__(self, flags: int) -> None:
        self._si_flags = flags
        self._si_model: onnx.ModelProto | None = None
        self._si_inputs: list[ITensor] = []
        self._si_outputs: list[ITensor] = []
        self._si_layers: list[ILayer] = []

    def _si_populate(self, model: onnx.ModelProto) -> None:
        g = _plan.Graph.of(model)
        self._si_model = model
        self._si_inputs = [
            ITensor(i.name, _dtype(_plan.dtype_name(i.type.tensor_type.elem_type)), _dims(i), True) for i in g.inputs()
        ]
        self._si_outputs = [
            ITensor(o.name, _dtype(_plan.dtype_name(o.type.tensor_type.elem_type)), _dims(o), False)
            for o in model.graph.output
        ]
        self._si_layers = [ILayer(n) for n in model.graph.node]

    flags = property(lambda self: self._si_flags)
    num_inputs = property(lambda self: len(self._si_inputs))
    num_outputs = property(lambda self: len(self._si_outputs))
    num_layers = property(lambda self: len(self._si_layers))
    name = property(lambda self: self._si_model.graph.name if self._si_model is not None else "")
    has_implicit_batch_dimension = property(lambda self: False)

    def get_input(self, index: int) -> ITensor:
        return self._si_inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._si_outputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self._si_layers[index]

    def __len__(self) -> int:
        return len(self._si_layers)

    def __getitem__(self, index: int) -> ILayer:
        return self._si_layers[index]

    def get_flag(self, flag) -> bool:
        # TensorRT 11 networks are always strongly typed; the flag is kept for compatibility.
        return flag.name == "STRONGLY_TYPED" or _bool(self._si_flags & (1 << int(flag)))

    def mark_unfused_tensors_as_debug_tensors(self) -> bool:
        return True


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


class ParserError(_Strict):
    _si_name = "ParserError"

    def __init__(self, problem: _plan.ParseProblem) -> None:
        self._si_problem = problem

    def code(self):
        return _member("ErrorCode", self._si_problem.code)

    def desc(self) -> str:
        return self._si_problem.desc

    def node(self) -> int:
        return self._si_problem.node

    def node_name(self) -> str:
        return self._si_problem.name

    def node_operator(self) -> str:
        return self._si_problem.op

    def func(self) -> str:
        return self._si_problem.func

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def local_function_stack(self) -> list[str]:
        return []

    def local_function_stack_size(self) -> int:
        return 0

    def __str__(self) -> str:
        p = self._si_problem
        return (
            f"In node {p.node} with name: {p.name} and operator: {p.op} ({p.func}): {p.code}: {p.desc}"
            if p.node >= 0
            else f"{p.code}: {p.desc}"
        )


class OnnxParser(_Strict):
    _si_name = "OnnxParser"

    def __init__(self, network: INetworkDefinition, logger) -> None:
        self._si_network = network
        self._si_logger = logger
        self._si_errors: list[ParserError] = []
        self._si_flags = 1 << int(_member("OnnxParserFlag", "NATIVE_INSTANCENORM"))

    @property
    def flags(self) -> int:
        return self._si_flags

    @flags.setter
    def flags(self, value: int) -> None:
        self._si_flags = value

    def set_flag(self, flag) -> None:
        self._si_flags |= 1 << int(flag)

    def clear_flag(self, flag) -> None:
        self._si_flags &= ~(1 << int(flag))

    def get_flag(self, flag) -> bool:
        return _bool(self._si_flags & (1 << int(flag)))

    num_errors = property(lambda self: len(self._si_errors))

    def get_error(self, index: int) -> ParserError:
        return self._si_errors[index]

    def clear_errors(self) -> None:
        self._si_errors = []

    def _si_fail(self, problem: _plan.ParseProblem) -> bool:
        error = ParserError(problem)
        self._si_errors.append(error)
        _log(self._si_logger, "ERROR", str(error))
        return False

    def parse(self, model, path: str | None = None) -> bool:
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:  # the real parser reports any protobuf failure this way
            return self._si_fail(_plan.ParseProblem(-1, "", "", "MODEL_DESERIALIZE_FAILED", f"{exc}", "parse"))
        problems = _plan.parse_problems(proto)
        for problem in problems:
            self._si_fail(problem)
        if problems:
            return False
        self._si_network._si_populate(proto)
        return True

    def parse_from_file(self, model: str) -> bool:
        try:
            data = open(model, "rb").read()
        except OSError as exc:
            return self._si_fail(
                _plan.ParseProblem(
                    -1, "", "", "MODEL_DESERIALIZE_FAILED", f"Failed to open file: {model} ({exc})", "parseFromFile"
                )
            )
        return self.parse(data, model)

    def supports_operator(self, op_name: str) -> bool:
        return True


# --- builder, config, profiles, timing cache --------------------------------------------------------


class IOptimizationProfile(_Strict):
    _si_name = "IOptimizationProfile"

    def __init__(self) -> None:
        self._si_shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the real parameter names
        self._si_shapes[input] = (Dims(min), Dims(opt), Dims(max))

    def get_shape(self, input: str) -> list[Dims]:  # noqa: A002
        return list(self._si_shapes.get(input, (Dims(), Dims(), Dims())))

    def __bool__(self) -> bool:
        return _bool(self._si_shapes) and all(
            len(a) == len(b) == len(c) and all(x <= y <= z for x, y, z in zip(a, b, c, strict=True))
            for a, b, c in self._si_shapes.values()
        )


class ITimingCache(_Strict):
    """Timings keyed by layer: a build adds its layers, ``combine`` merges, ``serialize`` round-trips."""

    _si_name = "ITimingCache"
    _si_MAGIC = b"TRT-STANDIN-TIMING-CACHE\n"

    def __init__(self, entries: dict[str, float]) -> None:
        self._si_entries = dict(entries)

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._si_MAGIC + json.dumps(self._si_entries, sort_keys=True).encode())

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._si_entries.update(input_cache._si_entries)
        return True

    def reset(self) -> bool:
        self._si_entries = {}
        return True


class IBuilderConfig(_Strict):
    _si_name = "IBuilderConfig"

    def __init__(self) -> None:
        self._si_flags = {_member("BuilderFlag", "TF32")}  # TF32 is on by default
        self._si_pools: dict[Any, int] = {}
        self._si_profiles: list[IOptimizationProfile] = []
        self._si_cache: ITimingCache | None = None
        self._si_verbosity = _member("ProfilingVerbosity", "LAYER_NAMES_ONLY")
        self._si_level = 3
        self._si_tactics = 0b11
        self._si_preview: set = set()

    def set_flag(self, flag) -> None:
        self._si_flags.add(flag)

    def clear_flag(self, flag) -> None:
        self._si_flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self._si_flags

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self._si_pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool) -> int:
        return self._si_pools.get(pool, 24 << 30 if pool.name == "WORKSPACE" else 0)

    @property
    def profiling_verbosity(self):
        return self._si_verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, value) -> None:
        self._si_verbosity = value

    @property
    def builder_optimization_level(self) -> int:
        return self._si_level

    @builder_optimization_level.setter
    def builder_optimization_level(self, value: int) -> None:
        if not 0 <= int(value) <= 5:
            raise ValueError("builder_optimization_level must be 0..5")
        self._si_level = int(value)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile:
            return -1
        self._si_profiles.append(profile)
        return len(self._si_profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._si_profiles))
    DLA_core = property(lambda self: -1)
    default_device_type = property(lambda self: _member("DeviceType", "GPU"))
    engine_capability = property(lambda self: _member("EngineCapability", "STANDARD"))

    def get_tactic_sources(self) -> int:
        return self._si_tactics

    def set_tactic_sources(self, tactic_sources: int) -> bool:
        self._si_tactics = tactic_sources
        return True

    def get_preview_feature(self, feature) -> bool:
        return feature in self._si_preview

    def set_preview_feature(self, feature, enable: bool) -> None:
        (self._si_preview.add if enable else self._si_preview.discard)(feature)

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache({})
        if not data.startswith(ITimingCache._si_MAGIC):
            raise RuntimeError("Failed to create timing cache: the serialized cache is not a TensorRT timing cache")
        return ITimingCache(json.loads(data[len(ITimingCache._si_MAGIC) :]))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._si_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self._si_cache


class Builder(_Strict):
    _si_name = "Builder"

    def __init__(self, logger) -> None:
        gpu = _si_options["gpu"]
        if gpu is None or not gpu.devices:
            # As the real builder does without a usable GPU (NVIDIA/TensorRT#2913).
            _log(logger, "ERROR", "CUDA initialization failure with error: 35")
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self._si_logger = logger

    logger = property(lambda self: self._si_logger)
    num_DLA_cores = property(lambda self: 0)
    max_DLA_batch_size = property(lambda self: 1)

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        def fail(message: str) -> None:
            _log(
                self._si_logger, "ERROR", f"IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error ({message})"
            )

        if network._si_model is None or not network.num_outputs:
            return fail("Network must have at least one output")
        dynamic = [t.name for t in network._si_inputs if any(d < 0 for d in t.shape)]
        if dynamic and not config._si_profiles:
            return fail("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        for index, profile in enumerate(config._si_profiles):
            for name in dynamic:
                if name not in profile._si_shapes:
                    return fail(f"Optimization profile {index} has no shapes for input {name}")
        g = _plan.Graph.of(network._si_model)
        problems = _plan.build_problems(g)
        if problems:
            return fail(problems[0])
        detailed = config.profiling_verbosity.name == "DETAILED"
        opt_batch = config._si_profiles[0]._si_shapes[dynamic[0]][1][0] if dynamic and config._si_profiles else 1
        layers = _plan.layers(network._si_model, opt_batch, _si_options["myelin"])
        if config._si_cache is not None:  # the builder times each layer once and caches it
            config._si_cache._si_entries.update({layer["Name"]: 0.01 for layer in layers})
        gpu = _si_options["gpu"]
        header = {
            "tensorrt_version": __version__,
            "compute_capability": list(gpu.compute_capability),
            "verbosity": config.profiling_verbosity.name,
            "flags": sorted(flag.name for flag in config._si_flags),
            "qdq": any(n.op_type in _plan.QDQ for n in network._si_model.graph.node),  # explicitly quantized
            "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._si_inputs],
            "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._si_outputs],
            "profiles": [
                {name: [list(s) for s in shapes] for name, shapes in p._si_shapes.items()} for p in config._si_profiles
            ],
            "layers": layers if detailed else [layer["Name"] for layer in layers],
        }
        return IHostMemory(_plan.serialize(header, network._si_model.SerializeToString()))


# --- runtime, engine, execution context, inspector ---------------------------------------------------


class Runtime(_Strict):
    _si_name = "Runtime"

    def __init__(self, logger) -> None:
        self._si_logger = logger
        self._si_host_code = False

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._si_host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        self._si_host_code = _bool(value)

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        def fail(message: str) -> None:
            _log(self._si_logger, "ERROR", f"IRuntime::deserializeCudaEngine: Error Code 1: Serialization ({message})")

        parsed = _plan.deserialize(bytes(serialized_engine))
        if parsed is None:
            return fail("Serialization assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.")
        header, model_bytes = parsed
        if header["tensorrt_version"] != __version__:
            return fail(
                f"Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed. Version tag does not match. "
                f"The engine was built with TensorRT {header['tensorrt_version']}, this is {__version__}"
            )
        gpu = _si_options["gpu"]
        if tuple(header["compute_capability"]) != tuple(gpu.compute_capability):
            cc = ".".join(map(str, header["compute_capability"]))
            return fail(f"The engine plan file is generated on an incompatible device, expecting compute {cc}")
        return ICudaEngine(header, model_bytes, self._si_logger)


class ICudaEngine(_Strict):
    _si_name = "ICudaEngine"

    def __init__(self, header: dict, model_bytes: bytes, logger) -> None:
        self._si_header = header
        self._si_model_bytes = model_bytes
        self._si_logger = logger
        self._si_io = [(n, "INPUT", d, s) for n, d, s in header["inputs"]] + [
            (n, "OUTPUT", d, s) for n, d, s in header["outputs"]
        ]
        self._si_session = None

    def _si_io_of(self, name: str):
        for entry in self._si_io:
            if entry[0] == name:
                return entry
        raise KeyError(name)

    def _si_run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._si_session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.intra_op_num_threads = 1  # the machine's cores are shared with other test runs
            # The graph runs as written, as TensorRT-target Q/DQ graphs must on ONNX Runtime.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            self._si_session = ort.InferenceSession(self._si_model_bytes, opts, providers=["CPUExecutionProvider"])
        return self._si_session.run(None, feed)

    num_io_tensors = property(lambda self: len(self._si_io))
    num_layers = property(lambda self: len(self._si_header["layers"]))
    num_optimization_profiles = property(lambda self: max(len(self._si_header["profiles"]), 1))
    name = property(lambda self: "stand-in engine")
    streamable_weights_size = property(lambda self: 0)
    device_memory_size_v2 = property(lambda self: 0)
    refittable = property(lambda self: False)
    profiling_verbosity = property(lambda self: _member("ProfilingVerbosity", self._si_header["verbosity"]))

    @property
    def weight_streaming_budget_v2(self) -> int:
        return 0

    def get_tensor_name(self, index: int) -> str:
        return self._si_io[index][0]

    def get_tensor_mode(self, name: str):
        return _member("TensorIOMode", self._si_io_of(name)[1])

    def get_tensor_dtype(self, name: str):
        return _dtype(self._si_io_of(name)[2])

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._si_io_of(name)[3])

    def get_tensor_format(self, name: str, profile_index: int = 0):
        self._si_io_of(name)
        return _member("TensorFormat", "LINEAR")

    def get_tensor_location(self, name: str):
        self._si_io_of(name)
        return _member("TensorLocation", "DEVICE")

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        return [Dims(s) for s in self._si_header["profiles"][profile_index][name]]

    def is_shape_inference_io(self, name: str) -> bool:
        self._si_io_of(name)
        return False

    def get_aliased_input_tensor(self, name: str) -> str | None:
        self._si_io_of(name)
        return None

    def is_debug_tensor(self, name: str) -> bool:
        return False

    def create_execution_context(self, strategy=None) -> IExecutionContext:
        return IExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)

    def serialize(self) -> IHostMemory:
        return IHostMemory(_plan.serialize(self._si_header, self._si_model_bytes))


class IExecutionContext(_Strict):
    _si_name = "IExecutionContext"

    def __init__(self, engine: ICudaEngine) -> None:
        self._si_engine = engine
        self._si_profile = 0
        self._si_shapes: dict[str, Dims] = {}
        self._si_addresses: dict[str, int] = {}
        self._si_allocators: dict[str, Any] = {}
        self._si_debug_listener = None
        self._si_ready = False  # enqueued once since the shapes or profile last changed

    engine = property(lambda self: self._si_engine)
    active_optimization_profile = property(lambda self: self._si_profile)

    def _si_error(self, message: str) -> bool:
        _log(self._si_engine._si_logger, "ERROR", message)
        return False

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self._si_engine.num_optimization_profiles:
            return self._si_error(
                f"IExecutionContext::setOptimizationProfileAsync: profile index {profile_index} out of range"
            )
        self._si_profile = profile_index
        self._si_ready = False
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        entry = self._si_engine._si_io_of(name)
        profiles = self._si_engine._si_header["profiles"]
        shape = Dims(shape)
        if profiles and name in profiles[self._si_profile]:
            lo, _, hi = profiles[self._si_profile][name]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return self._si_error(
                    f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Given invalid tensor shape "
                    f"{list(shape)} for {name}: not within profile {self._si_profile} [{lo}, {hi}])"
                )
        elif len(shape) != len(entry[3]):
            return self._si_error(f"IExecutionContext::setInputShape: rank mismatch for {name}")
        self._si_shapes[name] = shape
        self._si_ready = False
        return True

    def _si_output_shape(self, entry) -> Dims:
        """Output dims: a dynamic axis takes the batch of the inputs (the graphs here batch on axis 0)."""
        batch = next(iter(self._si_shapes.values()), Dims([1]))[0] if self._si_shapes else -1
        return Dims(batch if d < 0 else d for d in entry[3])

    def get_tensor_shape(self, name: str) -> Dims:
        entry = self._si_engine._si_io_of(name)
        if entry[1] == "INPUT":
            return self._si_shapes.get(name, Dims(entry[3]))
        return self._si_output_shape(entry)

    def infer_shapes(self) -> list[str]:
        return [n for n, mode, _, s in self._si_engine._si_io if mode == "INPUT" and n not in self._si_shapes]

    all_binding_shapes_specified = property(lambda self: not self.infer_shapes())

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._si_engine._si_io_of(name)
        self._si_addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._si_addresses.get(name, 0)

    def set_output_allocator(self, name: str, output_allocator) -> bool:
        if self._si_engine._si_io_of(name)[1] != "OUTPUT":
            return self._si_error(f"setOutputAllocator: {name} is not an output")
        self._si_allocators[name] = output_allocator
        return True

    def get_output_allocator(self, name: str):
        return self._si_allocators.get(name)

    def set_all_tensors_debug_state(self, flag: bool) -> bool:
        return True

    def set_debug_listener(self, listener) -> bool:
        self._si_debug_listener = listener
        return True

    def get_debug_listener(self):
        return self._si_debug_listener

    def execute_async_v3(self, stream_handle: int) -> bool:
        gpu = _si_options["gpu"]
        if stream_handle and int(stream_handle) not in gpu.streams:
            return self._si_error("IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (invalid resource handle)")
        if int(stream_handle) in gpu.captures:
            # The first enqueue after a shape change sets up and synchronizes: TensorRT asks for one
            # plain enqueue before capturing (its CUDA graph documentation).
            if not self._si_ready:
                return self._si_error(
                    "IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (operation not permitted when stream "
                    "is capturing)"
                )
            gpu.captures[int(stream_handle)].append(lambda: self._si_launch(stream_handle))
            return True
        if not self._si_launch(stream_handle):
            return False
        self._si_ready = True
        return True

    def _si_launch(self, stream_handle: int) -> bool:
        """One inference: inputs read from and outputs written to the stand-in GPU's memory; the GPU's
        clock advances by its kernel time (``Gpu.kernel_ms``, else the host time it took)."""
        gpu = _si_options["gpu"]
        engine = self._si_engine
        feed = {}
        for name, mode, dtype, _ in engine._si_io:
            if mode != "INPUT":
                continue
            if name not in self._si_shapes:
                return self._si_error(
                    f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (input {name} has no shape)"
                )
            address = self._si_addresses.get(name, 0)
            shape = tuple(self._si_shapes[name])
            np_dtype = np.dtype(_NUMPY[dtype])
            nbytes = int(np.prod(shape)) * np_dtype.itemsize
            if not address or not gpu.owning(address, nbytes):
                return self._si_error(
                    f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (Parameter check failed, condition: "
                    f"address of input {name} is set to device memory of {nbytes} bytes)"
                )
            feed[name] = np.frombuffer(gpu.view(address, nbytes), dtype=np_dtype).reshape(shape).copy()
        started = time.perf_counter()
        results = engine._si_run(feed)
        took_ms = (time.perf_counter() - started) * 1e3
        batch = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
        gpu.clock_ms += gpu.kernel_ms(engine._si_header, batch) if gpu.kernel_ms is not None else took_ms
        outputs = [entry for entry in engine._si_io if entry[1] == "OUTPUT"]
        for (name, _, dtype, _), value in zip(outputs, results, strict=True):
            value = np.ascontiguousarray(value, dtype=_NUMPY[dtype])
            allocator = self._si_allocators.get(name)
            if allocator is not None:
                address = allocator.reallocate_output_async(
                    name, self._si_addresses.get(name, 0), value.nbytes, 256, stream_handle
                )
                allocator.notify_shape(name, Dims(value.shape))
            else:
                address = self._si_addresses.get(name, 0)
            if not address or not gpu.owning(int(address), value.nbytes):
                return self._si_error(
                    f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (output {name} has no device memory "
                    f"of {value.nbytes} bytes)"
                )
            gpu.view(int(address), value.nbytes)[:] = value.reshape(-1).view(np.uint8)
        return True


class EngineInspector(_Strict):
    _si_name = "EngineInspector"

    def __init__(self, engine: ICudaEngine) -> None:
        self._si_engine = engine
        self._si_context = None

    @property
    def execution_context(self):
        return self._si_context

    @execution_context.setter
    def execution_context(self, value) -> None:
        self._si_context = value

    def get_layer_information(self, layer_index: int, format) -> str:
        layer = self._si_engine._si_header["layers"][layer_index]
        if format.name != "JSON":
            return layer if isinstance(layer, str) else layer["Name"]
        if _si_options["inspector_layout"] == "unknown" and isinstance(layer, dict):
            return json.dumps({"layer": layer["Name"], "kind": layer["LayerType"], "io": len(layer["Inputs"])})
        return json.dumps(layer)

    def get_engine_information(self, format) -> str:
        header = self._si_engine._si_header
        if format.name != "JSON":
            return "\n".join(layer if isinstance(layer, str) else layer["Name"] for layer in header["layers"])
        info: dict[str, Any] = {
            "I/O Tensors": [
                {"Name": n, "IOMode": mode.title(), "DataType": _plan.INSPECTOR_DTYPES[d], "Dimensions": s}
                for n, mode, d, s in self._si_engine._si_io
            ]
        }
        if _si_options["inspector_layout"] == "engine":
            info["Layers"] = header["layers"]
        return json.dumps(info)


# --- the module itself: attribute access checked against the real module's names ----------------------


class _StrictModule(types.ModuleType):
    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith("_si_"):
            return super().__getattribute__(name)
        _strict.check_active()
        if name not in _MODULE:
            raise _strict.refuse("tensorrt", name)
        _strict.CALLS[f"tensorrt.{name}"] += 1
        try:
            value = super().__getattribute__(name)
        except AttributeError:
            raise _strict.gap("tensorrt", name) from None
        if _MODULE[name]["kind"] == "function":
            return _strict.checked("tensorrt", name, _MODULE[name]["signatures"], value)
        return value


sys.modules[__name__].__class__ = _StrictModule
