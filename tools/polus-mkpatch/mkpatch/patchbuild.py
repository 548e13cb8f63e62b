"""Compiling a unit of the new tree to assembly for the patch, and building the patch itself."""
import os
import subprocess

from .common import BuildFailed, run

SOURCE_SUFFIXES = (".c", ".i", ".cc", ".cpp", ".cxx", ".C", ".s", ".S")
DROP_WITH_VALUE = {"-o", "-MF", "-MT", "-MQ"}
DROP = {"-c", "-MD", "-MMD", "-MP", "-S", "-E"}
# What the patch's copy of a unit is compiled with, after the project's own flags (GENERATOR.md).
PATCH_FLAGS = ["-S", "-fPIC", "-ffixed-r11", "-g0", "-ffunction-sections", "-fdata-sections",
               "-flive-patching=inline-clone"]


def compile_to_asm(tree_root, rec, out_path):
    cwd = os.path.join(tree_root, rec["cwd"]) if not os.path.isabs(rec["cwd"]) else rec["cwd"]
    source_abs = os.path.join(tree_root, rec["source"]) if not os.path.isabs(rec["source"]) else rec["source"]
    args, i, found = [], 0, False
    raw = rec["args"]
    while i < len(raw):
        a = raw[i]
        if a in DROP_WITH_VALUE:
            i += 2
            continue
        if a in DROP or a.startswith("-flto") or a.startswith("-Wp,-M"):
            i += 1
            continue
        if not a.startswith("-") and a.endswith(SOURCE_SUFFIXES):
            if os.path.normpath(os.path.join(cwd, a)) != os.path.normpath(source_abs):
                i += 1
                continue
            found = True
        args.append(a)
        i += 1
    if not found:
        args.append(source_abs)
    argv = [rec["compiler"]] + args + PATCH_FLAGS + ["-o", out_path]
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BuildFailed("compiling %s for the patch failed:\n%s\n%s" % (rec["source"], " ".join(argv),
                                                                         proc.stdout.decode(errors="replace")[-3000:]))
    return argv


def link_libraries(link_rec):
    """The -l/-L/-pthread arguments of the target's link, for the patch's own link."""
    out = []
    if not link_rec:
        return out
    args = link_rec["args"]
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-l", "-L") and i + 1 < len(args):
            out += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith(("-l", "-L")) or a == "-pthread":
            out.append(a)
        i += 1
    return out


def link_patch(outdir, patch_c, asm_files, include_dir, libs, output, log_path):
    argv = ["gcc", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unused-function", "-I", include_dir, "-I", outdir,
            "-o", output, patch_c] + asm_files + ["-Wl,-z,defs", "-Wl,-z,now"] + libs
    with open(os.path.join(outdir, "build-patch.sh"), "w") as f:
        f.write("#!/bin/sh\n# Rebuilds %s from the generated sources (after an author file changed, say).\n"
                "set -e\ncd \"$(dirname \"$0\")\"\n%s\n" % (os.path.basename(output), " ".join(
                    _quote(a if not a.startswith(outdir + "/") else a[len(outdir) + 1:]) for a in argv)))
    os.chmod(os.path.join(outdir, "build-patch.sh"), 0o755)
    run(argv, cwd=outdir, log_path=log_path, what="building the patch")


def _quote(a):
    return a if a and all(c.isalnum() or c in "-_./=,+:" for c in a) else "'" + a.replace("'", "'\\''") + "'"
