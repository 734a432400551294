#!/usr/bin/env python3
"""Compile-check kernels/cuda with NVRTC (no GPU needed).

Every kernels/cuda/*.cu is compiled the way the CUDA backend compiles it at run time:
common.cuh text, a #line directive, then the .cu text, as one NVRTC program. Each is built
to PTX for the oldest architecture the NVRTC supports (compute_50 for NVRTC 12.9, compute_75
for 13.0), compute_80 and compute_90 with -std=c++17; any error or warning fails the check
(except NVRTC 12's notice that compute_70 is deprecated, which no option silences). The `.entry` names in the PTX are then compared with the expected kernel table
below: a missing or an unexpected entry point fails the check.

Every NVRTC found is checked in turn: the PyPI wheels `nvidia-cuda-nvrtc-cu12` (CUDA 12,
nvidia/cuda_nvrtc/lib) and `nvidia-cuda-nvrtc` (CUDA 13, nvidia/cu13/lib); set NVRTC_LIB
to check one other libnvrtc.so instead, or pass --major to check one version only.

    python3 scripts/nvrtc_check.py            # check everything, with every NVRTC found
    python3 scripts/nvrtc_check.py --major 13 # with NVRTC 13 only (an error if absent)
    python3 scripts/nvrtc_check.py --list     # also print every entry point per file
    python3 scripts/nvrtc_check.py --ptx DIR  # also write the PTX files into DIR
"""

import argparse
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels", "cuda")
# The oldest architecture the NVRTC supports is added in front (50 for 12.9, 75 for 13.0).
ARCHS = ["compute_80", "compute_90"]
BASE_OPTIONS = ["-std=c++17", "--display-error-number"]
# Elementwise, reduction and index kernels must round like the CPU backend (Rust never
# contracts a*b+c into an FMA); matmul is free to fuse.
FILE_OPTIONS = {
    "elementwise.cu": ["--fmad=false"],
    "reduce.cu": ["--fmad=false"],
    "softmax.cu": ["--fmad=false"],
    "index.cu": ["--fmad=false"],
    "scatter.cu": ["--fmad=false"],
    "sort.cu": ["--fmad=false"],
    "matmul.cu": ["--fmad=true"],
}
# NVRTC 12.x prints this for compute_70 whatever the options; it is not about our code.
ALLOWED_WARNINGS = [
    re.compile(r"^nvrtc: warning: Architectures prior to '<compute/sm>_75' are deprecated"),
]

# sizeof(McParams) in kernels/cuda/common.cuh, which the Rust backend mirrors.
PARAMS_BYTES = 472

# ---- The expected entry points -----------------------------------------------------------

FLOATS = ["f32", "f16", "bf16"]
INTS = ["u32", "u8", "i32", "i64"]
SIGNED = ["i32", "i64"]
DTYPES = FLOATS + INTS
INDICES = ["u32", "i32", "i64"]
UNARY = ["neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "gelu_tanh",
         "gelu_erf", "silu", "sin", "cos"]
INT_BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "remainder"]
BINARY = INT_BINARY + ["pow"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]
INT_REDUCE = ["sum", "max", "min", "argmax", "argmin"]
REDUCE = INT_REDUCE + ["mean"]
SCATTER = ["assign", "sum", "prod", "max", "min"]  # Op::Scatter, ScatterOp::name()


def expected():
    """file name -> set of kernel names: every op x every dtype the CPU backend runs."""
    ew = set()
    ew |= {f"unary_{op}_{t}" for op in UNARY for t in FLOATS}
    ew |= {f"unary_{op}_{t}" for op in ["neg", "abs"] for t in SIGNED}
    ew |= {f"binary_{op}_{t}" for op in BINARY for t in FLOATS}
    ew |= {f"binary_{op}_{t}" for op in INT_BINARY for t in INTS}
    ew |= {f"affine_{t}" for t in FLOATS}
    ew |= {f"compare_{op}_{t}_{o}" for op in COMPARE for t in DTYPES for o in {t, "u8"}}
    ew |= {f"where_{t}" for t in DTYPES}
    ew |= {f"fill_{t}" for t in DTYPES}
    ew |= {f"copy_{t}" for t in DTYPES}
    ew |= {f"cast_{s}_{d}" for s in DTYPES for d in DTYPES}
    red = {f"reduce_{op}_{t}{team}" for op in REDUCE for t in FLOATS for team in ["", "_warp"]}
    red |= {f"reduce_{op}_{t}{team}" for op in INT_REDUCE for t in INTS
            for team in ["", "_warp"]}
    soft = {f"{name}_{t}{team}" for name in ["softmax", "log_softmax"] for t in FLOATS
            for team in ["", "_warp"]}
    idx = set()
    idx |= {f"{name}_{t}_{i}" for name in ["gather", "index_select"] for t in DTYPES
            for i in INDICES}
    idx |= {f"{name}{atomic}_{t}_{i}" for name in ["scatter_add", "index_add"]
            for atomic in ["", "_atomic"] for t in FLOATS for i in INDICES}
    scat = {f"scatter_{op}_{t}_{i}" for op in SCATTER for t in DTYPES for i in INDICES}
    sort = {f"argsort_keys_{t}" for t in DTYPES} | {"argsort_merge", "argsort_tile"}
    mm = {f"matmul_tiled_{t}" for t in FLOATS}
    return {"elementwise.cu": ew, "reduce.cu": red, "softmax.cu": soft, "index.cu": idx,
            "scatter.cu": scat, "sort.cu": sort, "matmul.cu": mm}


# ---- NVRTC through ctypes --------------------------------------------------------------------

def find_nvrtcs():
    """Every libnvrtc to check: NVRTC_LIB alone, else each wheel's (CUDA 13, then 12)."""
    env = os.environ.get("NVRTC_LIB")
    if env:
        return [env]
    found = []
    try:
        import nvidia  # the wheels' namespace package
        for base in list(nvidia.__path__):
            for wheel, name in (("cu13", "libnvrtc.so.13"), ("cuda_nvrtc", "libnvrtc.so.12")):
                path = os.path.join(base, wheel, "lib", name)
                if os.path.exists(path):
                    found.append(path)
    except ImportError:
        pass
    if not found:
        sys.exit("libnvrtc not found: pip install nvidia-cuda-nvrtc (CUDA 13) or "
                 "nvidia-cuda-nvrtc-cu12, or set NVRTC_LIB")
    return found


class Nvrtc:
    def __init__(self, path):
        self.path = path
        # NVRTC 13 opens its builtins by soname and does not look beside itself (12 does):
        # loading them first, from the same directory, is what the Rust backend does too.
        for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path),
                                                      "libnvrtc-builtins.so.*"))):
            if ".alt." not in builtins:
                ctypes.CDLL(builtins)
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def oldest_arch(self):
        """The oldest architecture this NVRTC compiles for, as compute_XY."""
        count = ctypes.c_int()
        self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count))
        archs = (ctypes.c_int * count.value)()
        self.lib.nvrtcGetSupportedArchs(archs)
        return f"compute_{min(archs)}"

    def version(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return major.value, minor.value

    def compile(self, source, name, options):
        """Returns (ok, log, ptx)."""
        lib = self.lib
        prog = ctypes.c_void_p()
        rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                    None, None)
        if rc != 0:
            raise RuntimeError(f"nvrtcCreateProgram: {lib.nvrtcGetErrorString(rc).decode()}")
        try:
            opts = [o.encode() for o in options]
            arr = (ctypes.c_char_p * len(opts))(*opts)
            rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            if rc != 0:
                return False, log, ""
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, ptx)
            return True, log, ptx.value.decode()
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def program_text(cu_path):
    """common.cuh, then the .cu: what the Rust backend hands to NVRTC."""
    with open(os.path.join(KERNELS, "common.cuh")) as f:
        common = f.read()
    with open(cu_path) as f:
        body = f.read()
    name = os.path.basename(cu_path)
    return f'#line 1 "common.cuh"\n{common}\n#line 1 "{name}"\n{body}'


def problems_in(log):
    """Lines of the log that are errors or warnings we do not allow."""
    bad = []
    for line in log.splitlines():
        if not re.search(r"\b(warning|error)\b", line, re.IGNORECASE):
            continue
        if any(p.search(line) for p in ALLOWED_WARNINGS):
            continue
        bad.append(line)
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every entry point per file")
    ap.add_argument("--ptx", metavar="DIR", help="write <file>.<arch>.ptx into DIR")
    ap.add_argument("--major", type=int, help="check only the NVRTC of this major version")
    args = ap.parse_args()

    failed = False
    checked = 0
    for path in find_nvrtcs():
        nvrtc = Nvrtc(path)
        major, minor = nvrtc.version()
        if args.major is not None and major != args.major:
            print(f"(NVRTC {major}.{minor} from {path}: not checked, --major {args.major})")
            continue
        checked += 1
        failed |= check(nvrtc, args)
    if checked == 0:
        print(f"nvrtc_check: no NVRTC {args.major} found")
        return 1
    if failed:
        print("nvrtc_check: FAILED")
        return 1
    print(f"nvrtc_check: all files compile cleanly and export the expected kernels "
          f"(with {checked} NVRTC version{'s' if checked > 1 else ''})")
    return 0


def check(nvrtc, args):
    """Compiles every file with one NVRTC; True when anything failed."""
    major, minor = nvrtc.version()
    archs = [nvrtc.oldest_arch()] + ARCHS
    print(f"NVRTC {major}.{minor} from {nvrtc.path}: {', '.join(archs)}")
    ptx_dir = os.path.join(args.ptx, f"nvrtc{major}") if args.ptx else None
    want = expected()
    files = sorted(glob.glob(os.path.join(KERNELS, "*.cu")))
    failed = False
    for name in sorted(set(want) - {os.path.basename(f) for f in files}):
        print(f"MISSING FILE kernels/cuda/{name}")
        failed = True
    total = 0
    for path in files:
        name = os.path.basename(path)
        source = program_text(path)
        entries_per_arch = {}
        for arch in archs:
            options = [f"--gpu-architecture={arch}"] + BASE_OPTIONS + FILE_OPTIONS.get(name, [])
            ok, log, ptx = nvrtc.compile(source, name, options)
            bad = problems_in(log)
            if not ok or bad:
                failed = True
                print(f"FAIL {name} [{arch}] {' '.join(options)}")
                print(log.rstrip())
                continue
            entries = re.findall(r"^\s*\.(?:visible\s+)?\.?entry\s+(\w+)\s*\(", ptx, re.M)
            entries_per_arch[arch] = set(entries)
            # The ABI the Rust side mirrors: parameter 0 is McParams by value.
            params = dict(re.findall(
                r"\.entry\s+(\w+)\s*\(\s*\.param\s+\.align\s+8\s+\.b8\s+\w+_param_0\[(\d+)\]",
                ptx))
            wrong = sorted(e for e in entries if params.get(e) != str(PARAMS_BYTES))
            if wrong:
                failed = True
                print(f"FAIL {name} [{arch}]: parameter 0 is not a {PARAMS_BYTES}-byte, "
                      f"8-aligned McParams in: {' '.join(wrong)}")
            if ptx_dir:
                os.makedirs(ptx_dir, exist_ok=True)
                with open(os.path.join(ptx_dir, f"{name}.{arch}.ptx"), "w") as f:
                    f.write(ptx)
        if len(entries_per_arch) != len(archs):
            continue
        sets = list(entries_per_arch.values())
        if any(s != sets[0] for s in sets):
            failed = True
            print(f"FAIL {name}: the architectures export different entry points")
        got = sets[0]
        total += len(got)
        expect = want.get(name, set())
        missing, extra = sorted(expect - got), sorted(got - expect)
        status = "ok" if not missing and not extra else "FAIL"
        print(f"{status} {name}: {len(got)} entry points, {', '.join(archs)}")
        if missing:
            failed = True
            print(f"  missing ({len(missing)}): {' '.join(missing)}")
        if extra:
            failed = True
            print(f"  not in the expected table ({len(extra)}): {' '.join(extra)}")
        if args.list:
            for e in sorted(got):
                print(f"    {e}")
    print(f"{total} entry points in all (NVRTC {major}.{minor})")
    return failed


if __name__ == "__main__":
    sys.exit(main())
