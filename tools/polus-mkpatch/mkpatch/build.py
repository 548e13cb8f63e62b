"""Building the old and the new tree, at the same path, through the polus-cc wrapper.

Both trees are built in WORKDIR/src (so paths compiled into the objects are the same); the old
one is then moved to WORKDIR/old. The wrapper adds the generator's flags to every compile and
logs it (tree-relative paths are kept, so a log entry can be replayed in either tree).
"""
import hashlib
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
        self.source_tree = None   # the unbuilt source it was built from

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


def build(workdir, source_tree, command, phase, fix=None, flags=None, base=None):
    """Copies `source_tree` to WORKDIR/src, applies `fix` (a diff) if given, builds it with
    `command` through the wrapper, and returns the Build (still at WORKDIR/src).

    With `base` (the Build of the old tree, already moved aside) the build is incremental, as
    kpatch-build does it: WORKDIR/src becomes a copy of the built old tree (times kept), the files
    in which `source_tree` (+ `fix`) differs from `base`'s source are written over it (with a new
    time), and `command` rebuilds what depends on them. Objects nothing changed are the old ones,
    byte for byte; compile records are the old ones overlaid with those of the rebuild."""
    src = os.path.join(workdir, "src")
    build_log = os.path.join(workdir, phase + "-build.log")
    if os.path.exists(build_log):
        os.unlink(build_log)
    if base is not None:
        pristine = _pristine(workdir, source_tree, fix, build_log)
        if os.path.exists(src):
            shutil.rmtree(src)
        shutil.copytree(base.root, src, symlinks=True)
        _overlay(base.source_tree, pristine, src)
    else:
        _copy_tree(source_tree, src)
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
    if base is not None:
        compiles = dict(base.compiles, **compiles)
        links = dict(base.links, **links)
    if not compiles:
        raise Refused("the %s build compiled nothing through the compiler wrapper: the build command must use "
                      "$CC/$CXX or cc/gcc/g++ from $PATH (a fresh tree, not one already built)" % phase)
    result = Build(src, compiles, links)
    result.source_tree = pristine if base is not None else os.path.abspath(source_tree)
    if base is None and fix:
        result.source_tree = _pristine(workdir, source_tree, fix, build_log)
    return result


# Reusing builds across a series (--reuse-builds): the tree built as patch N's new version is
# patch N+1's old version. WORKDIR/src keeps a stamp: what source it was built from (a digest of
# every file of the unbuilt tree), with which command and flags, and its compile records.
STAMP = ".polus-mkpatch-build.json"


def tree_digest(tree):
    """SHA-256 over every file of an (unbuilt) source tree: relative path, kind and content."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, tree)
            if rel.startswith(".polus-mkpatch"):
                continue
            h.update(rel.encode() + b"\0")
            if os.path.islink(path):
                h.update(b"L" + os.readlink(path).encode() + b"\0")
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    h.update(b"F" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _pristine(workdir, source_tree, fix, build_log):
    """The unbuilt source of a version: `source_tree`, or a copy of it with `fix` applied."""
    if not fix:
        return os.path.abspath(source_tree)
    pristine = os.path.join(workdir, "pristine-new")
    _copy_tree(source_tree, pristine)
    apply_fix(pristine, fix, build_log)
    return pristine


def _overlay(old_source, new_source, built):
    """Makes the built copy `built` of `old_source` hold `new_source`'s files: those that differ
    are written (with the current time, so make rebuilds what depends on them), those gone are
    removed."""
    def files(tree):
        out = {}
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, tree)] = path
        return out
    old, new = files(old_source), files(new_source)
    for rel, path in new.items():
        dst = os.path.join(built, rel)
        if rel in old and not os.path.islink(path) and not os.path.islink(old[rel]) and \
                _same_file(old[rel], path):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst):
            os.unlink(dst)
        if os.path.islink(path):
            os.symlink(os.readlink(path), dst)
        else:
            shutil.copyfile(path, dst)
            shutil.copymode(path, dst)
    for rel in old:
        if rel not in new and os.path.lexists(os.path.join(built, rel)):
            os.unlink(os.path.join(built, rel))


def _same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def save_stamp(result, command, flags=None):
    """Records in the built tree what it was built from (for the next patch of a series)."""
    stamp = {"source": tree_digest(result.source_tree), "command": command,
             "flags": " ".join(flags or GENERATOR_FLAGS), "compiles": result.compiles, "links": result.links}
    with open(os.path.join(result.root, STAMP), "w") as f:
        json.dump(stamp, f)


def reusable(workdir, source_tree, command, flags=None):
    """The Build left at WORKDIR/src (the previous run's new tree) or WORKDIR/old (its old one)
    if it was built from exactly `source_tree` with `command` and the same flags; else None."""
    digest = None
    for place in ("src", "old"):
        found, digest = _reusable_at(os.path.join(workdir, place), source_tree, command, flags, digest)
        if found is not None:
            if place == "old":
                src = os.path.join(workdir, "src")
                if os.path.exists(src):
                    shutil.rmtree(src)
                os.rename(found.root, src)
                found.root = src
            return found
    return None


def _reusable_at(src, source_tree, command, flags, digest):
    try:
        with open(os.path.join(src, STAMP)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None, digest
    if stamp.get("command") != command or stamp.get("flags") != " ".join(flags or GENERATOR_FLAGS):
        return None, digest
    digest = digest or tree_digest(source_tree)
    if stamp.get("source") != digest:
        return None, digest
    result = Build(src, stamp["compiles"], stamp["links"])
    result.source_tree = os.path.abspath(source_tree)
    return result, digest


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
    moved = Build(dst, build_result.compiles, build_result.links)
    moved.source_tree = getattr(build_result, "source_tree", None)
    return moved


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
