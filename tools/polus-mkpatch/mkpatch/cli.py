"""polus-mkpatch's command line: from a source fix to a checked patch (see GENERATOR.md)."""
import argparse
import os
import shutil
import sys
import tempfile

from . import build, closure, compare, heuristics, patchbuild, report
from .asmpatch import rewrite
from .cgen import generate
from .common import (EXIT_BUILD, EXIT_INCOMPLETE, EXIT_OK, EXIT_PATCH_BUILD, EXIT_REFUSED, BuildFailed, Findings,
                     Refused, c_ident, log, tool_dir)
from .plan import Plan
from .target import Binary, compare_builds
from .versions import Versions


class Unit:
    def __init__(self, tu, asm_path, fixups):
        self.tu, self.asm_path, self.fixups = tu, asm_path, fixups
        self.fixup_table = "__polus_fixups_%s" % c_ident(tu.obj)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="polus-mkpatch", description="Generate a Polus live patch from a source fix.")
    p.add_argument("--old", required=True, help="source tree of the running version")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--fix", help="the fix, a unified diff to apply to the old tree (patch -p1, or -p0)")
    g.add_argument("--new", help="the fixed source tree")
    p.add_argument("--build", required=True, help="the build command, run in the tree (e.g. 'make -j2')")
    p.add_argument("--binary", help="the program the patch is for, relative to the tree (default: the one linked)")
    p.add_argument("--target", help="the running binary, if it is not the old tree as rebuilt here (its build-id "
                                    "binds the patch)")
    p.add_argument("--out", required=True, help="output directory (the patch, its sources, the report)")
    p.add_argument("--name", help="the patch's name (default: from the fix)")
    p.add_argument("--description", help="one line for the operator")
    p.add_argument("--versions", help="version file shared by a series of patches (created if missing)")
    p.add_argument("--fresh-data", action="append", default=[], metavar="NAME",
                   help="a changed global the program never writes at run time (a table): the patch carries its "
                        "new definition with its initial value and does not sync it with the old one (repeatable; "
                        "file-static names as file.c:name)")
    p.add_argument("--author", help="C file with the author's part (sync functions, heap conversion)")
    p.add_argument("--workdir", help="where to build (default: a temporary directory, removed afterwards)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the build trees")
    p.add_argument("--reuse-builds", action="store_true",
                   help="with --workdir: take the old build from the previous run if it built exactly this old "
                        "tree (a series: patch N's new tree is patch N+1's old one), and build the new tree "
                        "incrementally from the old build")
    p.add_argument("--include", default=os.environ.get("POLUS_PATCH_INCLUDE") or
                   os.path.join(os.path.dirname(os.path.dirname(tool_dir())), "patch-format", "include"),
                   help="directory holding polus/patch.h")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    findings = Findings()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="polus-mkpatch-")
    os.makedirs(workdir, exist_ok=True)
    rep = report.Report(out, findings)
    try:
        status = _generate(args, out, workdir, findings, rep)
    except Refused as e:
        rep.refused(str(e))
        log("refused: %s" % e)
        status = EXIT_REFUSED
    except BuildFailed as e:
        rep.failed(str(e))
        log(str(e))
        status = EXIT_BUILD
    finally:
        if not args.workdir and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    rep.write()
    return status


def _generate(args, out, workdir, findings, rep):
    versions = Versions(os.path.abspath(args.versions) if args.versions else None)
    for path in (args.old, args.new):
        if path and not os.path.isdir(path):
            raise Refused("%s is not a directory" % path)
    if args.reuse_builds and not args.workdir:
        raise Refused("--reuse-builds needs --workdir (the directory the builds are kept in between runs)")
    old = build.reusable(workdir, os.path.abspath(args.old), args.build) if args.reuse_builds else None
    if old is not None:
        log("the old tree: reusing the build in %s (built from the same source, command and flags)" % old.root)
        findings.note("old build reused from the previous run (same source digest, command and flags)")
    else:
        old = build.build(workdir, os.path.abspath(args.old), args.build, "old")
        if args.reuse_builds:
            build.save_stamp(old, args.build)
    old = build.move(old, os.path.join(workdir, "old"))
    new = build.build(workdir, os.path.abspath(args.new or args.old), args.build, "new",
                      fix=os.path.abspath(args.fix) if args.fix else None,
                      base=old if args.reuse_builds else None)
    if args.reuse_builds:
        findings.note("new tree built incrementally from the old build (only what the fix touches was recompiled)")
        build.save_stamp(new, args.build)
    binary = build.find_binary(new, args.binary)
    build.find_binary(old, binary)
    old_bin = Binary(old.path(binary))
    prior = versions.target()
    if args.target:
        running = Binary(os.path.abspath(args.target))
    elif prior:
        running = Binary(prior["path"]) if os.path.exists(prior["path"]) else None
        if running is None:
            findings.cannot_verify("the version file's target %s is gone; the patch is bound to its build-id %s"
                                   % (prior["path"], prior["build_id"]))
    else:
        running = None
    build_id = running.build_id if running else (prior["build_id"] if prior else old_bin.build_id)
    if prior and running and running.build_id != prior["build_id"]:
        raise Refused("the version file %s belongs to a target with build-id %s, not %s" %
                      (args.versions, prior["build_id"], running.build_id))
    # Keep the binaries next to the patch: the rebuilt old one is what the patch is for when no
    # --target is given; the new one is the version the patch brings (to compare against).
    shutil.copy2(old_bin.path, os.path.join(out, "old-" + os.path.basename(binary)))
    shutil.copy2(new.path(binary), os.path.join(out, "new-" + os.path.basename(binary)))
    rep.context(args, binary, build_id, versions.number, running.path if running else
                os.path.join(out, "old-" + os.path.basename(binary)))

    analysis = compare.analyse(old, new, binary, findings)
    closure.close_over(analysis, old, new, findings)
    _fresh_data(analysis, args.fresh_data, findings)
    rep.analysis = analysis
    if not analysis.kept and not analysis.data_changes:
        raise Refused("the fix changes no function and no data of %s (compared object by object)" % binary)
    heuristics.void_casts(analysis, new.root, findings)
    heuristics.stored_addresses(analysis, findings)
    plan = Plan(analysis, versions, old_bin, findings)
    rep.plan = plan
    units = []
    for tu in analysis.contributing:
        if tu.new is None:
            continue
        raw = os.path.join(workdir, c_ident(tu.obj) + ".full.s")
        patchbuild.compile_to_asm(new.root, tu.new_rec, raw)
        with open(raw) as f:
            text = f.read()
        unit_plan = plan.unit_plan(tu, text)
        asm, fixups = rewrite(text, unit_plan, plan.refs, findings)
        asm_path = os.path.join(out, os.path.splitext(os.path.basename(tu.obj))[0] + ".patch.s")
        with open(asm_path, "w") as f:
            f.write(asm)
        units.append(Unit(tu, asm_path, fixups))
    name = args.name or (os.path.splitext(os.path.basename(args.fix))[0] if args.fix else "patch" + plan.suffix)
    description = args.description or "generated by polus-mkpatch from %s" % (
        os.path.basename(args.fix) if args.fix else os.path.basename(os.path.abspath(args.new)))
    author = None
    if args.author:
        author = "author.c"
        shutil.copy2(args.author, os.path.join(out, author))
    author_text = ""
    if args.author:
        with open(args.author, errors="replace") as f:
            author_text = f.read()
    text, skeleton, record = generate(plan, units, build_id, name, description, author, findings, versions.number,
                                      author_text)
    with open(os.path.join(out, "patch.c"), "w") as f:
        f.write(text)
    if skeleton:
        with open(os.path.join(out, "author-skeleton.c"), "w") as f:
            f.write(skeleton)
    if running:
        live = {v for e in versions.state["entities"].values() for v in e.values()}
        specs = {s for s in plan.refs.order} | {spec for spec, _ in plan.replaced.values()}
        if versions.number > 1:
            findings.cannot_verify("patch %d builds on the %d earlier patch(es) of %s: its old tree is compared with "
                                   "the new one, not with the code running now (the version file says where each "
                                   "entity lives)" % (versions.number, versions.number - 1, args.versions))
        compare_builds(old_bin, running, {s for s in specs if s not in live}, findings,
                       quiet_identity=versions.number > 1)
    _check_old_functions(plan, running or old_bin, findings)
    force = _check_copies(plan, analysis, findings)
    so = os.path.join(out, name + ".so")
    if os.path.exists(so):
        os.unlink(so)
    link_rec = new.links.get(binary)
    try:
        patchbuild.link_patch(out, os.path.join(out, "patch.c"), [u.asm_path for u in units], args.include,
                              patchbuild.link_libraries(link_rec), so, os.path.join(out, "patch-build.log"))
    except BuildFailed as e:
        if findings.placeholders and not author:
            rep.incomplete()
            log("the generated patch needs its author: see %s" % os.path.join(out, "report.txt"))
            return EXIT_INCOMPLETE
        rep.failed(str(e))
        log(str(e))
        return EXIT_PATCH_BUILD
    if findings.placeholders and not author:
        raise BuildFailed("internal: the patch built although it has placeholders")
    rep.built(so, force)
    versions.record(name, so, {"path": running.path if running else os.path.join(out, "old-" + os.path.basename(binary)),
                               "build_id": build_id}, record)
    return EXIT_OK


def _fresh_data(analysis, names, findings):
    """--fresh-data: globals whose layout changed that the author says are never written at run
    time become new data (their new initial value, no sync); the rest with an initial value get
    a warning, as syncing copies the running values over it."""
    for name in names:
        keys = [k for k, ch in analysis.data_changes.items() if name in (ch.key, k[1])]
        if not keys:
            raise Refused("--fresh-data %s: the fix does not change the type of a global of that name (changed: %s)"
                          % (name, ", ".join(sorted(ch.key for ch in analysis.data_changes.values())) or "none"))
        for k in keys:
            change = analysis.data_changes[k]
            if change.kind != "layout":
                raise Refused("--fresh-data %s: it is %s, not a global whose own bytes changed layout" %
                              (name, "thread-local" if change.kind == "tls" else "a pointer to changed heap data"))
            del analysis.data_changes[k]
            analysis.new_data.add(k)
            findings.note("%s: carried with its new initial value, not synced with the old one (--fresh-data: the "
                          "program never writes it at run time); old code keeps reading the old one, new code the "
                          "new one" % change.key)
    for (obj, name), change in sorted(analysis.data_changes.items()):
        tu = analysis.tus[obj]
        ent = tu.new.data.get(name) if tu.new else None
        if change.kind == "layout" and ent is not None and ent.section.type != "SHT_NOBITS":
            findings.warn("initializer-changed", "%s has initial contents in the new version; the update fills the new "
                          "copy from the running one (matched members), not from them. If the program never writes "
                          "%s at run time (a table), pass --fresh-data %s" % (change.key, change.key, change.key))


def _check_copies(plan, a, findings):
    """gcc's copies of a replaced function in the old build (foo.part.0, foo.isra.0), which
    callers reach without passing foo's entry: polusctl refuses a patch that leaves them unless
    --force. Copies are local to their object, so their callers are found in the old object's
    relocations: if the patch replaces every one of them, no new code reaches the copy and
    --force is safe (returned: the reasons); otherwise a warning names the callers left."""
    reasons = []
    for (obj, name), _ in sorted(plan.replaced.items()):
        tu = a.tus[obj]
        if tu.old is None:
            continue
        replaced_here = {n for (o, n) in plan.replaced if o == obj}
        for copy in sorted(tu.old.parts_of(name)):
            if copy == name + ".cold":
                continue  # the function's own cold part: only its body jumps there
            callers = closure.named_users(tu.old, copy) - {name}
            outside = sorted(callers - replaced_here)
            if outside:
                findings.warn("copies", "%s: gcc's copy %s in the running binary is also called by %s, which the patch "
                                        "does not replace: polusctl refuses the patch, as those calls would keep "
                                        "running the old body; replace those callers too" %
                              (tu.key(name, False), copy, ", ".join(outside)))
            else:
                reasons.append("%s is called only by %s, all replaced by this patch" %
                               (copy, ", ".join(sorted(callers | {name}))))
    if reasons:
        findings.note("polusctl apply needs --force: it refuses a replaced function with copies gcc made unless it "
                      "can tell who calls them; the old object's relocations show it: " + "; ".join(reasons))
    return reasons


def _check_old_functions(plan, binary, findings):
    """Every OLD function the patch redirects must be in the target and long enough for a jump."""
    for (obj, name), (spec, new) in sorted(plan.replaced.items()):
        if plan.v.knows(spec) or spec in [e.get("call") for e in plan.v.state["entities"].values()]:
            continue
        found = binary.lookup(spec)
        if found is None:
            if binary.has_symtab:
                raise Refused("%s, which the fix changes, is not in %s's symbol table; polusctl could not redirect "
                              "it" % (spec, binary.path))
        elif found[0] and found[0] < 5:
            findings.warn("too-short", "%s is %d bytes in the target: polusctl redirects it only if padding follows"
                          % (spec, found[0]))
