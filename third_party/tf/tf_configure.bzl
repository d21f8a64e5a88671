"""Repository rule: the pip-installed TensorFlow as a cc_library, found through Python.

Runs `$PYTHON_BIN_PATH -c "import tensorflow"` (default `python3`) to locate the include dir,
libtensorflow_framework.so.2 and TensorFlow's own compile flags (C++ standard, ABI, defines), so
nothing about the TensorFlow build is hard-coded here.
"""

_QUERY = """
import json, os, tensorflow as tf
print(json.dumps({"include": tf.sysconfig.get_include(), "lib": tf.sysconfig.get_lib(),
                  "cflags": tf.sysconfig.get_compile_flags(),
                  "lflags": tf.sysconfig.get_link_flags()}))
"""

def _tf_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH", "python3")
    result = ctx.execute([python, "-c", _QUERY], environment = {"TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.return_code != 0:
        fail("cannot import tensorflow with %s (set --repo_env=PYTHON_BIN_PATH to a Python " %
             python + "that has tensorflow installed):\n" + result.stderr)
    info = json.decode(result.stdout.strip().splitlines()[-1])
    ctx.symlink(info["include"], "include")
    framework = None
    for flag in info["lflags"]:
        if flag.startswith("-l:"):
            framework = flag[3:]
    if not framework:
        fail("no -l:libtensorflow_framework flag in " + str(info["lflags"]))
    ctx.symlink(info["lib"] + "/" + framework, framework)
    copts = [f for f in info["cflags"] if not f.startswith("-I") and not f.startswith("-D")]
    defines = [f[2:] for f in info["cflags"] if f.startswith("-D")]
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tensorflow_framework",
    hdrs = glob(["include/**"], exclude = ["include/external/**/*.cc"]),
    includes = ["include"],
    defines = {defines},
    srcs = ["{framework}"],
)

# TensorFlow's compile flags that are not include paths or defines (the C++ standard, ...).
TF_COPTS = {copts}
""".format(defines = repr(defines), framework = framework, copts = repr(copts)))
    ctx.file("copts.bzl", "TF_COPTS = %s\nTF_LIB_DIR = %s\n" % (repr(copts), repr(info["lib"])))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
