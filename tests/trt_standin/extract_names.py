"""Extract the names of the real TensorRT 11 Python bindings and CUDA runtime into ``names/``.

The stand-in refuses any name these lists lack. Run this only to refresh the lists
(needs network access to the package index, ``gcc`` and binutils' ``nm``):

    python tests/trt_standin/extract_names.py [--work /tmp/trt-names]

How, step by step:

1. ``pip download --no-deps`` the ``tensorrt_cu13_bindings`` cp311 manylinux wheel and the
   ``tensorrt_cu13`` sdist (its ``tensorrt/__init__.py`` is ``from tensorrt_bindings import *``
   plus ``__version__``), both of version ``TRT_VERSION``.
2. ``tensorrt_bindings/tensorrt.so`` needs ``libnvinfer.so.11``, ``libnvinfer_plugin.so.11`` and
   ``libnvonnxparser.so.11``, which come only from NVIDIA's index. It imports only eleven C
   entry points from them (``nm -D --undefined-only``: ``createInferBuilder_INTERNAL`` and the
   like), none of which runs while the module initializes: pybind11 registers classes, methods,
   properties and enums from data inside ``tensorrt.so``. So we compile three stub libraries
   with those entry points returning null, put them beside ``tensorrt.so`` (its RPATH is
   ``$ORIGIN``) and import the real bindings, then read every class's ``dir()``: the very
   names a ``tensorrt`` user can touch, per class, with which properties are read-only, the
   enum members and pybind11's signature lines. No stub function is called.
3. ``pip download --no-deps nvidia-cuda-runtime`` (CUDA 13: ``nvidia/cu13/lib/libcudart.so.13``)
   and read its exported functions with ``nm -D --defined-only``.

The wheels themselves are not kept in the repository; only the JSON lists are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

TRT_VERSION = "11.4.0.106"
CUDART_PACKAGE = "nvidia-cuda-runtime==13.5.37"
HERE = Path(__file__).resolve().parent
NAMES = HERE / "names"

STUB_C = textwrap.dedent(
    """
    /* Entry points tensorrt.so imports from libnvinfer/libnvonnxparser/libnvinfer_plugin.
       Never called while the module initializes; present only so the dynamic loader resolves them. */
    #include <stddef.h>
    void* createInferBuilder_INTERNAL(void* a, int b) { return NULL; }
    void* createInferRefitter_INTERNAL(void* a, void* b, int c) { return NULL; }
    void* createInferRuntime_INTERNAL(void* a, int b) { return NULL; }
    void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c) { return NULL; }
    void* createNvOnnxParser_INTERNAL(void* a, void* b, int c) { return NULL; }
    int getNvOnnxParserVersion(void) { return 0; }
    void* getBuilderPluginRegistry(int a) { return NULL; }
    void* getPluginRegistry(void) { return NULL; }
    int initLibNvInferPlugins(void* a, const char* b) { return 0; }
    int getInferLibVersion(void) { return 0; }
    """
)

# Runs in a fresh interpreter with the unpacked wheel and sdist on sys.path.
DUMP = textwrap.dedent(
    r"""
    import enum, inspect, json, sys, types
    import tensorrt as trt

    PREFIXES = ("tensorrt_bindings.tensorrt.", "tensorrt.tensorrt.", "tensorrt_bindings.")
    SKIP = set(dir(object)) | {"_pybind11_conduit_v1_", "__dict__", "__weakref__", "__module__", "__annotations__"}
    SKIP.add("__entries")  # pybind11's enum bookkeeping

    def clean(text):
        for p in PREFIXES:
            text = text.replace(p, "")
        return text

    def signatures(obj):
        # pybind11 writes an overloaded function's docstring as "name(*args, **kwargs)", then
        # "Overloaded function.", then one numbered signature per overload ("1. name(self: ...) -> bool").
        doc = getattr(obj, "__doc__", None) or ""
        lines = [l.strip() for l in doc.strip().splitlines()]
        if any(l.startswith("Overloaded function") for l in lines[:2]):
            name = lines[0].split("(", 1)[0]
            numbered = [l.split(". ", 1)[1] for l in lines if l[:1].isdigit() and ". " in l]
            return [clean(l) for l in numbered if l.startswith(name + "(")]
        return [clean(lines[0])] if lines and "(" in lines[0] else []

    def special(cls):
        # Signatures of the constructor and __eq__ where the bindings define them (pybind11's own).
        found = {}
        for name in ("__init__", "__eq__"):
            raw = cls.__dict__.get(name)
            if raw is not None and type(raw).__name__ in ("instancemethod", "builtin_function_or_method"):
                found[name] = signatures(raw)
        return found

    def is_enum(cls):
        return isinstance(getattr(cls, "__members__", None), dict)

    def value_of(value):
        entry = {"kind": "value", "type": clean(type(value).__qualname__)}
        if is_enum(type(value)):
            entry["member"] = value.name
        return entry

    classes = {}

    def describe(cls, qualname):
        if qualname in classes:
            return
        entry = {"bases": [clean(b.__qualname__) for b in cls.__mro__[1:] if b is not object], "attrs": {}}
        if is_enum(cls):
            entry["members"] = {k: int(v) for k, v in sorted(cls.__members__.items())}
        elif special(cls):
            entry["special"] = special(cls)
        for name in sorted(dir(cls)):
            if name in SKIP or name.startswith("__pybind11"):
                continue
            raw = None
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    raw = klass.__dict__[name]
                    break
            value = getattr(cls, name)
            if isinstance(raw, property):
                entry["attrs"][name] = {"kind": "property", "writable": raw.fset is not None}
            elif isinstance(raw, staticmethod) or (raw is not None and type(raw).__name__ == "staticmethod"):
                entry["attrs"][name] = {"kind": "staticmethod", "signatures": signatures(value)}
            elif inspect.isclass(value):
                entry["attrs"][name] = {"kind": "class"}
                describe(value, qualname + "." + name)
            elif is_enum(cls) and name in cls.__members__:
                entry["attrs"][name] = {"kind": "member"}
            elif callable(value):
                entry["attrs"][name] = {"kind": "method", "signatures": signatures(value)}
            else:
                entry["attrs"][name] = value_of(value)
        classes[qualname] = entry

    module = {}
    for name in sorted(dir(trt)):
        if name.startswith("__") and name != "__version__":
            continue
        value = getattr(trt, name)
        if inspect.isclass(value):
            module[name] = {"kind": "class"}
            describe(value, name)
        elif isinstance(value, types.ModuleType):
            module[name] = {"kind": "module"}
        elif callable(value):
            module[name] = {"kind": "function", "signatures": signatures(value)}
        else:
            module[name] = value_of(value)
    json.dump({"version": trt.__version__, "module": module, "classes": classes}, sys.stdout, indent=1, sort_keys=True)
    """
)


def run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(spec: str, dest: Path, *extra: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", str(dest), *extra)
    (found,) = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz")]
    return found


def tensorrt_names(work: Path) -> dict:
    wheel = download(
        f"tensorrt_cu13_bindings=={TRT_VERSION}",
        work / "wheel",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
    )
    sdist = download(f"tensorrt_cu13=={TRT_VERSION}", work / "sdist", "--no-binary=:all:")
    site = work / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    with tarfile.open(sdist) as t:
        member = f"tensorrt_cu13-{TRT_VERSION}/tensorrt/__init__.py"
        (site / "tensorrt").mkdir(exist_ok=True)
        (site / "tensorrt" / "__init__.py").write_bytes(t.extractfile(member).read())
    so = site / "tensorrt_bindings" / "tensorrt.so"
    undefined = run("nm", "-D", "--undefined-only", str(so))
    stub = work / "stub.c"
    stub.write_text(STUB_C)
    for lib in ("libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11"):
        run("gcc", "-shared", "-fPIC", "-o", str(so.parent / lib), str(stub))
    dumped = json.loads(run(sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + DUMP))
    assert dumped["version"] == TRT_VERSION, dumped["version"]
    trt_imports = sorted(
        line.split()[-1]
        for line in undefined.splitlines()
        if "INTERNAL" in line or "Plugin" in line or "OnnxParser" in line
    )
    dumped["extracted_from"] = {
        "wheel": wheel.name,
        "wheel_sha256": sha256(wheel),
        "sdist": sdist.name,
        "sdist_sha256": sha256(sdist),
        "how": "tests/trt_standin/extract_names.py: import of the real bindings over null stub libnvinfer/"
        "libnvonnxparser/libnvinfer_plugin, dir() of every class",
        "native_entry_points_stubbed": trt_imports,
    }
    return dumped


def cudart_names(work: Path) -> dict:
    wheel = download(CUDART_PACKAGE, work / "cudart", "--only-binary=:all:")
    with zipfile.ZipFile(wheel) as z:
        (lib,) = [n for n in z.namelist() if "/lib/libcudart.so." in n]
        z.extract(lib, work / "cudart")
    exported = run("nm", "-D", "--defined-only", str(work / "cudart" / lib))
    functions = sorted({line.split()[-1].split("@")[0] for line in exported.splitlines() if " T " in line})
    return {
        "library": lib,
        "extracted_from": {
            "wheel": wheel.name,
            "wheel_sha256": sha256(wheel),
            "how": "tests/trt_standin/extract_names.py: nm -D --defined-only on the wheel's libcudart",
        },
        "functions": functions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/trt-names"))
    args = parser.parse_args()
    NAMES.mkdir(exist_ok=True)
    trt = tensorrt_names(args.work)
    (NAMES / f"tensorrt-{TRT_VERSION}.json").write_text(json.dumps(trt, indent=1, sort_keys=True) + "\n")
    cudart = cudart_names(args.work)
    (NAMES / "libcudart-13.json").write_text(json.dumps(cudart, indent=1, sort_keys=True) + "\n")
    print(f"{len(trt['classes'])} TensorRT classes, {len(cudart['functions'])} libcudart functions")


if __name__ == "__main__":
    main()
