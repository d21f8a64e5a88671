"""Build and install tf-puma.

`pip install --no-build-isolation -e .` compiles every `custom_ops/*.cc` with the system C++
compiler against the installed pip TensorFlow (flags from `tf.sysconfig`, never hard-coded) into
one op library, `tf_puma/_puma_ops.so`, which `tf_puma` loads in every process, and
`custom_ops/bind_host.c` into `tf_puma/_puma_bind.so` (preloaded so TF servers bind one host).
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import shlex
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# Portable code generation; AVX2/AVX-512/AES-NI paths are picked at run time by the kernels.
OPT_FLAGS = ["-O3", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-sign-compare",
             "-Wno-deprecated-declarations", "-Wno-interference-size"]


def _tf_flags() -> tuple[list[str], list[str]]:
    out = subprocess.check_output(
        [sys.executable, "-c",
         "import tensorflow as tf; print(' '.join(tf.sysconfig.get_compile_flags()));"
         "print(' '.join(tf.sysconfig.get_link_flags()))"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, text=True)
    compile_line, link_line = out.strip().splitlines()[-2:]
    return shlex.split(compile_line), shlex.split(link_line)


class BuildTfOps(build_ext):
    """Compiles the op library with TensorFlow's own compile and link flags."""

    def get_ext_filename(self, fullname: str) -> str:
        # A TensorFlow op library, not a Python extension module: no ABI tag in its name.
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext: Extension) -> None:
        if ext.name == "tf_puma._puma_bind":  # plain C, no TensorFlow: preloaded before it
            out_path = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(out_path), exist_ok=True)
            cmd = [os.environ.get("CC", "gcc"), "-O2", "-fPIC", "-shared", "-Wall",
                   "-fvisibility=hidden", *ext.sources, "-o", out_path, "-ldl"]
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd)
            return
        cxx = os.environ.get("CXX", "g++")
        cflags, lflags = _tf_flags()
        lib_dir = next(f[2:] for f in lflags if f.startswith("-L"))
        out_path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        obj_dir = os.path.join(self.build_temp, "custom_ops")
        os.makedirs(obj_dir, exist_ok=True)

        def compile_one(src: str) -> str:
            obj = os.path.join(obj_dir, os.path.basename(src) + ".o")
            cmd = [cxx, *OPT_FLAGS, *cflags, "-I", HERE, "-c", src, "-o", obj]
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd)
            return obj

        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            objs = list(pool.map(compile_one, ext.sources))
        link = [cxx, "-shared", *objs, "-o", out_path, *lflags, f"-Wl,-rpath,{lib_dir}"]
        print(" ".join(link), flush=True)
        subprocess.check_call(link)


setup(
    name="tf-puma",
    version="0.1.0",
    description="Secure inference of pretrained transformers in TensorFlow (PUMA, 3-party RSS)",
    packages=find_packages(include=["tf_puma", "tf_puma.*"]) + ["tf_puma.rewrites",
                                                                "tf_puma.rewrites.idioms"],
    package_dir={"tf_puma.rewrites": "rewrites", "tf_puma.rewrites.idioms": "rewrites/idioms"},
    ext_modules=[Extension("tf_puma._puma_ops",
                           sorted(glob.glob(os.path.join("custom_ops", "*.cc")))),
                 # Preloaded by tf-puma processes so their TF server binds the spec's host.
                 Extension("tf_puma._puma_bind", [os.path.join("custom_ops", "bind_host.c")])],
    cmdclass={"build_ext": BuildTfOps},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["tf-puma=tf_puma.apps.cli:run_main"]},
)
