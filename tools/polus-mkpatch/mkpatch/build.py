"""Building the old and the new tree, at the same path, through the polus-cc wrapper.

Both trees are built in WORKDIR/src (so paths compiled into the objects are the same); the old
one is then moved to WORKDIR/old. The wrapper adds the generator's flags to every compile and
logs it (tree-relative paths are kept, so a log entry can be replayed in either tree).
"""
import json
import os
import shutil
import subprocess

from .common import BuildFailed, Refused, log, run, tool_dir

WRAPPED_NAMES = ["cc", "gcc", "c++", "g++", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++"]
# The flags every compile gets (GENERATOR.md says why each one).
GENERATOR_FLAGS = ["-g", "-ffunction-sections", "-fdata-sections", "-flive-patching=inline-clone"]


class Build:
    """One built tree: its compile and link records, with paths relative to the tree."""

    def __init__(self, root, compiles, links):
        self.root = root
        self.compiles = compiles  # object (relative) -> record
        self.links = links        # output (relative) -> record

    def path(self, rel):
        return os.path.join(self.root, rel)


def _which(name):
    for d in os.environ.get("PATH", "").split(":"):
        p = os.path.join(d, name)
        if d and os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None


def _wrapper_dir(workdir):
    bindir = os.path.join(workdir, "bin")
    os.makedirs(bindir, exist_ok=True)
    wrapper = os.path.join(tool_dir(), "polus-cc")
    for name in WRAPPED_NAMES:
        link = os.path.join(bindir, name)
        if not os.path.lexists(link):
            os.symlink(wrapper, link)
    return bindir


def _copy_tree(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True,
                    ignore=shutil.ignore_patterns(".polus-mkpatch*", ".polus-objects"))


def apply_fix(tree, fix, log_path):
    """Applies a unified diff to `tree` (tries -p1, then -p0)."""
    for level in ("-p1", "-p0"):
        dry = subprocess.run(["patch", level, "--dry-run", "-s", "-N", "-i", os.path.abspath(fix)], cwd=tree,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if dry.returncode == 0:
            run(["patch", level, "-s", "-N", "-i", os.path.abspath(fix)], cwd=tree, log_path=log_path,
                what="applying the fix " + fix)
            return
    raise BuildFailed("the fix %s does not apply to the old tree with patch -p1 or -p0:\n%s" %
                      (fix, dry.stdout.decode(errors="replace")[-2000:]))


def build(workdir, source_tree, command, phase, fix=None, flags=None):
    """Copies `source_tree` to WORKDIR/src, applies `fix` (a diff) if given, builds it with
    `command` through the wrapper, and returns the Build (still at WORKDIR/src)."""
    src = os.path.join(workdir, "src")
    _copy_tree(source_tree, src)
    build_log = os.path.join(workdir, phase + "-build.log")
    if os.path.exists(build_log):
        os.unlink(build_log)
    if fix:
        apply_fix(src, fix, build_log)
    cc_log = os.path.join(workdir, phase + "-compiles.jsonl")
    if os.path.exists(cc_log):
        os.unlink(cc_log)
    bindir = _wrapper_dir(workdir)
    env = dict(os.environ)
    env["PATH"] = bindir + ":" + env.get("PATH", "")
    env["CC"] = os.path.join(bindir, "gcc")
    env["CXX"] = os.path.join(bindir, "g++")
    env["POLUS_CC_LOG"] = cc_log
    env["POLUS_CC_OBJDIR"] = os.path.join(src, ".polus-objects")
    env["POLUS_REAL_CC"] = _which("gcc") or "/usr/bin/gcc"
    env["POLUS_REAL_CXX"] = _which("g++") or "/usr/bin/g++"
    env["POLUS_CC_FLAGS"] = " ".join(flags or GENERATOR_FLAGS)
    log("building the %s tree: %s" % (phase, command))
    run(["/bin/bash", "-c", command], cwd=src, env=env, log_path=build_log, what="the %s build (%s)" % (phase, command))
    compiles, links = {}, {}
    if os.path.exists(cc_log):
        with open(cc_log) as f:
            for line in f:
                rec = json.loads(line)
                for key in ("cwd", "source", "object", "output"):
                    if key in rec:
                        rec[key] = _relative(rec[key], src)
                if rec["kind"] == "compile":
                    compiles[rec["object"]] = rec
                else:
                    links[rec["output"]] = rec
    if not compiles:
        raise Refused("the %s build compiled nothing through the compiler wrapper: the build command must use "
                      "$CC/$CXX or cc/gcc/g++ from $PATH (a fresh tree, not one already built)" % phase)
    return Build(src, compiles, links)


def _relative(path, root):
    if path == root:
        return "."
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return path  # outside the tree (e.g. a system header): kept absolute


def move(build_result, dst):
    """Moves a built tree (WORKDIR/src) to `dst` and returns the Build there."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.rename(build_result.root, dst)
    return Build(dst, build_result.compiles, build_result.links)


def find_binary(build_result, wanted):
    """The target binary of a build: `wanted` (relative to the tree) or the one program linked."""
    if wanted:
        path = build_result.path(wanted)
        if not os.path.isfile(path):
            raise Refused("the build did not produce %s (--binary is relative to the tree)" % wanted)
        return wanted
    outputs = [o for o in build_result.links if os.path.isfile(build_result.path(o))]
    if len(outputs) == 1:
        return outputs[0]
    raise Refused("the build linked %s; say which one runs with --binary PATH (relative to the tree)" %
                  (", ".join(sorted(outputs)) if outputs else "nothing the wrapper saw"))
