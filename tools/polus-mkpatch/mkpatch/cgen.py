"""The generated patch source (patch.c): types, slots, sync functions, callbacks, descriptor."""
import re

from . import dwarf
from .common import c_ident
from .ctypes_gen import TypeWriter
from .dwarf import strip_qualifiers, type_of
from .syncgen import BITS_HELPER, CopyWriter


class Descriptor:
    def __init__(self):
        self.functions = []   # (enum name, C initializer)
        self.fn_index = {}    # ('old', spec) / ('new', symbol) -> index
        self.data = []
        self.mappings = []
        self.callbacks = []
        self.imports = []

    def function(self, side, name):
        key = (side, name)
        if key not in self.fn_index:
            self.fn_index[key] = len(self.functions)
            if side == "old":
                self.functions.append('POLUS_OLD_FUNCTION("%s")' % name)
            else:
                self.functions.append("POLUS_NEW_FUNCTION(%s)" % name)
        return self.fn_index[key]

    def mapping(self, kind, a, b):
        m = "POLUS_%s_MAPPING(%d, %d)" % (kind, a, b)
        if m not in self.mappings:
            self.mappings.append(m)


AUTHOR_PRE_UPDATE = "polus_author_pre_update"


def generate(plan, units, build_id, name, description, author_file, findings, version, author_text=""):
    """Returns (patch.c text, author skeleton text or None, {entity: version fields})."""
    a = plan.a
    types = TypeWriter(plan.suffix)
    desc = Descriptor()
    body, decls, skeleton, author_protos = [], [], [], []
    author_pre = bool(author_file and re.search(r"\b%s\s*\(" % AUTHOR_PRE_UPDATE, author_text))
    if author_pre:
        author_protos.append("static int %s(const struct polus_callback_args *args);" % AUTHOR_PRE_UPDATE)
    record = {}
    new_fns = set()
    # Functions: redirects first, then added ones.
    for (obj, fname), (spec, new) in sorted(plan.replaced.items()):
        o, n = desc.function("old", spec), desc.function("new", new)
        desc.mapping("FUNCTION", o, n)
        new_fns.add(new)
        record[a.tus[obj].key(fname)] = {"code": new}
    for (obj, fname), new in sorted(plan.added_fns.items()):
        key = a.tus[obj].key(fname)
        record[key] = {"code": new, "call": new}
        if (obj, fname) in a.sig_changed:
            findings.note("%s's signature changed: %s is an added function; its callers are replaced" % (key, new))
    # Data.
    callbacks_pre = []
    for (obj, dname), change in sorted(a.data_changes.items()):
        tu = a.tus[obj]
        key = tu.key(dname)
        old_spec = plan.v.data(key)
        new_sym = plan.kept_data[(obj, dname)]
        record[key] = {"data": new_sym}
        ot, nt = change.old_var.type if change.old_var else None, change.new_var.type if change.new_var else None
        slot = "polus_old_" + c_ident(dname)
        ident = c_ident(dname)
        if ot is None or nt is None:
            findings.placeholder("no-dwarf", "%s changed size but has no DWARF type: write its sync functions" % key)
            body.append('#error "polus-mkpatch: %s changed but its type is unknown (no DWARF)"' % key)
            continue
        decls.append("static %s; /* the old %s, filled in by the injector */" % (types.declare(ot, "*" + slot, False),
                                                                                 key))
        decls.append("extern %s; /* the new %s (in the carried code) */" % (types.declare(nt, new_sym, True), key))
        flags = "0"
        if change.kind == "tls":
            findings.placeholder("tls-changed", "thread-local %s changed type: every thread has its own copy in "
                                 "its TLS block, which a patch cannot convert; restructure the fix" % key)
            body.append('#error "polus-mkpatch: the thread-local %s changed type: Polus cannot convert each '
                        'thread\'s copy"' % key)
            continue
        if change.kind == "layout":
            fwd, back = "polus_sync_old_" + ident, "polus_sync_new_" + ident
            funcs, holes = [], []
            for fn, src_t, dst_t, dst_new in ((fwd, ot, nt, True), (back, nt, ot, False)):
                cw = CopyWriter(types, findings, key)
                cw.copy("(*dst)", dst_t, "(*src)", src_t, key, dst_new)
                for link in cw.heap_links:
                    findings.warn("heap", "%s: %s points to a changed type; the objects it leads to are not converted "
                                          "(write a pre-update callback in an --author file)" % (key, link))
                src_decl = types.declare(src_t, "*src", not dst_new)
                dst_decl = types.declare(dst_t, "*dst", dst_new)
                funcs.append(["/* After a write to the %s %s: bring the %s one up to date. */" %
                              ("old" if dst_new else "new", key, "new" if dst_new else "old"),
                              "static void %s(const struct polus_sync_args *args) {" % fn,
                              "    const %s = (const void *)args->written;" % src_decl,
                              "    %s = (void *)args->counterpart;" % dst_decl]
                             + [_arrow(line) for line in cw.lines] + ["}"])
                holes += cw.placeholders
            if holes:
                for h in holes:
                    findings.placeholder("sync", h + " (write %s and %s in an --author file; author-skeleton.c has "
                                                 "what could be generated)" % (fwd, back))
                author_protos.append("static void %s(const struct polus_sync_args *args);" % fwd)
                author_protos.append("static void %s(const struct polus_sync_args *args);" % back)
                skeleton.append("\n".join(line for f in funcs for line in f) + "\n")
            else:
                for f in funcs:
                    body.extend(f)
            _lock_warning(findings, key, nt)
        else:  # heap: the global keeps its layout, what it points to changed
            flags = "POLUS_DATA_HEAP_ROOT"
            fwd = back = None
            pairs = _pointee_pairs(ot, nt)
            names = [(types.c_name(po, False), types.c_name(pn, True)) for po, pn in pairs]
            findings.warn("heap", "%s (%s) leads to heap data of a changed type (%s): the generator cannot know how "
                                  "that data is shaped; write the pre-update callback that converts it (author-skeleton.c, "
                                  "--author)" % (key, dwarf.tag_name(ot), ", ".join("struct %s -> struct %s" % n
                                                                                   for n in names)))
            for po, pn in pairs:
                body.extend(_node_functions(types, findings, po, pn, key))
            findings.placeholder("heap", "%s: write polus_author_heap_%s() in an --author file (see author-skeleton.c)"
                                 % (key, ident))
            author_protos.append("static int polus_author_heap_%s(const struct polus_callback_args *args);" % ident)
            callbacks_pre.append("polus_author_heap_%s" % ident)
            skeleton.append(_heap_skeleton(key, ident, slot, new_sym, names))
        o_idx = len(desc.data)
        desc.data.append('{"%s", 0, (void **)&%s, 0, %s, 0, POLUS_OLD, %s}' % (old_spec, slot, fwd or "0", flags))
        n_idx = len(desc.data)
        desc.data.append('{"%s", (void *)&%s, 0, sizeof %s, %s, 0, POLUS_NEW, %s}' % (new_sym, new_sym, new_sym,
                                                                                  back or "0", flags))
        desc.mapping("DATA", o_idx, n_idx)
        for (uobj, uname) in sorted(change.old_users):
            f = desc.function("old", plan.v.code(a.tus[uobj].key(uname, new=False)))
            desc.mapping("F2D", f, o_idx)
            desc.mapping("D2F", o_idx, f)
        for (uobj, uname) in sorted(change.new_users):
            sym = plan.replaced.get((uobj, uname), (None, None))[1] or plan.added_fns.get((uobj, uname))
            if sym is None:
                continue
            f = desc.function("new", sym)
            new_fns.add(sym)
            desc.mapping("F2D", f, n_idx)
            desc.mapping("D2F", n_idx, f)
    for (obj, dname) in sorted(a.new_data):
        if (obj, dname) in plan.kept_data:
            record[a.tus[obj].key(dname)] = {"data": plan.kept_data[(obj, dname)]}
    new_fns |= {s for s in plan.added_fns.values()}
    # Fixups: data in the carried code that holds target addresses.
    fixup_tables = [u.fixup_table for u in units if u.fixups]
    if fixup_tables:
        callbacks_pre.insert(0, "polus_apply_fixups")
    # Imports.
    stubs = []
    for i, spec in enumerate(plan.refs.order):
        slot = "__polus_imp_%d_%s" % (i, c_ident(spec.split(":")[-1])[:40])
        decls.append('void *%s __attribute__((visibility("hidden")));' % slot)
        desc.imports.append('POLUS_IMPORT("%s", &%s)' % (spec, slot))
        if i in plan.refs.stubs:
            stub = slot.replace("__polus_imp_", "__polus_stub_", 1)
            stubs.append('    ".globl %s\\n.hidden %s\\n.type %s, @function\\n%s:\\n.cfi_startproc\\n'
                         '\\tjmp *%s(%%rip)\\n.cfi_endproc\\n.size %s, .-%s\\n"' % (stub, stub, stub, stub, slot,
                                                                                  stub, stub))
    # Assemble the file.
    out = []
    out.append("/*\n * Generated by polus-mkpatch: patch %d (%s) of %s.\n * %s\n *\n"
               " * Review it. Do not edit it: regenerate, with your own code in an --author file.\n"
               " * The code of the functions comes from the new source, compiled with the project's flags\n"
               " * (see the .s files beside this one); this file adds what Polus needs around it.\n */"
               % (version, name, build_id or "the old build", description))
    out.append("#include <polus/patch.h>\n")
    out.append("/* ---- Types, rebuilt from DWARF (old names as in the target, changed ones renamed) ---- */")
    out.append(types.text())
    out.append("/* ---- Target entities the carried code reaches, filled in by the injector ---- */")
    out.extend(decls)
    if stubs:
        out.append("/* Calls to target functions go through these. */")
        out.append('__asm__(".text\\n"\n' + "\n".join(stubs) + ");")
    for fn in sorted(new_fns):
        out.append("void %s(void); /* carried code (prototype only for its address) */" % fn)
    out.append(BITS_HELPER)
    out.append("/* ---- Sync functions ---- */")
    out.extend(body)
    if author_protos:
        out.append("/* ---- Written by the patch's author (--author) ---- */")
        out.extend(author_protos)
    if author_file:
        out.append('#include "%s"' % author_file)
    elif findings.placeholders:
        for code, msg in findings.placeholders:
            out.append('#error "polus-mkpatch: %s"' % msg.replace('"', "'").replace("\\", ""))
    if fixup_tables:
        out.append("struct polus_mkpatch_fixup { void **where; void **slot; long addend; };")
        for t in fixup_tables:
            out.append("extern const struct polus_mkpatch_fixup %s[];" % t)
        out.append("/* Data the carried code brings that holds addresses of target entities: set at the commit, "
                   "before any new code runs (the import slots are set by then). */")
        out.append("static int polus_apply_fixups(const struct polus_callback_args *args) {\n    (void)args;")
        out.append("    static const struct polus_mkpatch_fixup *const tables[] = {%s};" % ", ".join(fixup_tables))
        out.append("    for (unsigned i = 0; i < sizeof tables / sizeof tables[0]; i++)\n"
                   "        for (const struct polus_mkpatch_fixup *f = tables[i]; f->where; f++)\n"
                   "            *f->where = (char *)*f->slot + f->addend;\n    return 0;\n}")
    # The author's own pre-update work (redo what a fix changed in code that already ran), after
    # the generated callbacks: the fixups and conversions are done by then.
    if author_pre:
        callbacks_pre.append(AUTHOR_PRE_UPDATE)
        findings.note("the author's %s() runs at the commit (and again on rollback, args->rollback set), after "
                      "the generated callbacks" % AUTHOR_PRE_UPDATE)
    for cb in callbacks_pre:
        desc.callbacks.append("{POLUS_CB_PRE_UPDATE, 0, %s}" % cb)
    out.append(_arrays(desc, build_id))
    out.append('POLUS_PATCH("%s", "%s", %s);' % (name, description.replace('"', "'"), _counts(desc, build_id)))
    sk = None
    if skeleton:
        sk = ("/*\n * Author file skeleton for patch %d (%s): copy it, fill in every #error, and pass it to\n"
              " * polus-mkpatch with --author FILE. It is compiled at the end of the generated patch.c, which\n"
              " * defines the types, the slots (polus_old_*), the new globals and the polus_copy_* helpers.\n */\n"
              "#include <stdlib.h>\n\n" % (version, name)) + "\n".join(skeleton)
    return "\n".join(out) + "\n", sk, record


def _arrays(desc, build_id):
    out = []
    if desc.functions:
        out.append("static const struct polus_function functions[] = {\n%s\n};" % "\n".join(
            "    [%d] = %s," % (i, f) for i, f in enumerate(desc.functions)))
    if desc.data:
        out.append("static const struct polus_data data[] = {\n%s\n};" % "\n".join(
            "    [%d] = %s," % (i, d) for i, d in enumerate(desc.data)))
    if desc.mappings:
        out.append("static const struct polus_mapping mappings[] = {\n%s\n};" % "\n".join(
            "    %s," % m for m in desc.mappings))
    if desc.callbacks:
        out.append("static const struct polus_callback callbacks[] = {%s};" % ", ".join(desc.callbacks))
    if desc.imports:
        out.append("static const struct polus_import imports[] = {\n%s\n};" % "\n".join(
            "    %s," % i for i in desc.imports))
    if build_id:
        out.append('static const struct polus_build_id build_ids[] = {{NULL, "%s"}};' % build_id)
    return "\n".join(out)


def _counts(desc, build_id):
    def arr(name, items):
        return "%s, POLUS_ARRAY_COUNT(%s)" % (name, name) if items else "NULL, 0"
    return ", ".join([arr("functions", desc.functions), arr("data", desc.data), arr("mappings", desc.mappings),
                      arr("callbacks", desc.callbacks), arr("imports", desc.imports),
                      "build_ids, 1" if build_id else "NULL, 0"])


def _pointee_pairs(ot, nt, depth=0):
    """(old struct, new struct) pairs a pointer type leads to whose layout changed."""
    o, n = strip_qualifiers(ot), strip_qualifiers(nt)
    if o is None or n is None or depth > 4:
        return []
    if o.tag == n.tag == "DW_TAG_pointer_type":
        po, pn = strip_qualifiers(type_of(o)), strip_qualifiers(type_of(n))
        if po is not None and pn is not None and po.tag == pn.tag == "DW_TAG_structure_type":
            if dwarf.signature(po, True) != dwarf.signature(pn, True):
                return [(po, pn)]
            return []
        return _pointee_pairs(type_of(o), type_of(n), depth + 1)
    if o.tag == n.tag == "DW_TAG_array_type":
        return _pointee_pairs(type_of(o), type_of(n), depth + 1)
    if o.tag == n.tag == "DW_TAG_structure_type":
        pairs = []
        om = {dwarf.attr(m, "DW_AT_name"): m for m in o.iter_children() if m.tag == "DW_TAG_member"}
        for m in n.iter_children():
            if m.tag == "DW_TAG_member" and dwarf.attr(m, "DW_AT_name") in om:
                pairs += _pointee_pairs(type_of(om[dwarf.attr(m, "DW_AT_name")]), type_of(m), depth + 1)
        return pairs
    return []


def _node_functions(types, findings, po, pn, key):
    """Copy and sync functions for one changed heap node type."""
    oname, nname = c_ident(types.c_name(po, False)), c_ident(types.c_name(pn, True))
    out = []
    for fn, s, d, dst_new in (("polus_copy_%s_to_%s" % (oname, nname), po, pn, True),
                              ("polus_copy_%s_to_%s" % (nname, oname), pn, po, False)):
        cw = CopyWriter(types, findings, "heap node " + dwarf.tag_name(s))
        cw.copy("(*dst)", d, "(*src)", s, dwarf.tag_name(s), dst_new)
        cw.lines = [_arrow(line) for line in cw.lines]
        if cw.placeholders:
            for p in cw.placeholders:
                findings.placeholder("heap-node", p)
        out.append("/* Copies the members of an old node into a new one, or back (pointers to changed types are "
                   "left to the author). */")
        out.append("static __attribute__((unused)) void %s(%s, const %s) {" % (
            fn, types.declare(d, "*dst", dst_new), types.declare(s, "*src", not dst_new)))
        out.extend(cw.lines)
        out.append("}")
    out.append("/* Sync functions for node pairs registered with polus_register_heap_data(). */")
    out.append("static __attribute__((unused)) void polus_sync_old_%s(const struct polus_sync_args *a) {\n"
               "    polus_copy_%s_to_%s(a->counterpart, a->written);\n}" % (oname, oname, nname))
    out.append("static __attribute__((unused)) void polus_sync_new_%s(const struct polus_sync_args *a) {\n"
               "    polus_copy_%s_to_%s(a->counterpart, a->written);\n}" % (nname, nname, oname))
    return out


def _heap_skeleton(key, ident, slot, new_sym, names):
    steps = []
    for o, n in names:
        on, nn = c_ident(o), c_ident(n)
        steps.append(" *   struct %s -> struct %s: allocate `struct %s *n`, polus_copy_%s_to_%s(n, old), link n like\n"
                     " *   the old node, then polus_register_heap_data(old, n, sizeof *old, sizeof *n,\n"
                     " *   polus_sync_old_%s, polus_sync_new_%s); on rollback polus_copy_%s_to_%s(old, n) and\n"
                     " *   register the pair again." % (o, n, n, on, nn, on, nn, nn, on))
    lines = ["/*",
             " * Pre-update callback for the heap data reachable from %s. It runs in the commit pause" % key,
             " * (every other thread stopped, none inside malloc) and again with args->rollback set on a",
             " * rollback. The old global is *%s; the new one is %s (it starts as the new" % (slot, new_sym),
             " * program's initial value). For every old node:"] + steps + [
             " * Return non-zero to cancel the update (nothing is changed then).",
             " */",
             "static int polus_author_heap_%s(const struct polus_callback_args *args) {" % ident,
             "    if (!polus_register_heap_data) return -1; /* not running under the Polus agent */",
             "    (void)args;",
             '#error "fill in polus_author_heap_%s"' % ident,
             "    return -1;",
             "}"]
    return "\n".join(lines) + "\n"


def _arrow(line):
    return line.replace("(*dst).", "dst->").replace("(*src).", "src->")


LOCK_TYPES = ("pthread_mutex_t", "pthread_cond_t", "pthread_rwlock_t", "pthread_spinlock_t", "sem_t",
              "pthread_barrier_t")


def _lock_warning(findings, key, die, depth=0):
    """A lock inside changed data: old code locks the old copy, new code the new one."""
    if die is None or depth > 6:
        return
    name = dwarf.attr(die, "DW_AT_name")
    if die.tag == "DW_TAG_typedef" and name in LOCK_TYPES:
        findings.warn("lock-in-data", "%s contains a %s: while the update syncs, old code locks the old copy and new "
                                      "code the new one, so they do not exclude each other. Keep locks out of changed "
                                      "types, or make sure no old code using them runs (status shows holders)"
                      % (key, name))
        return
    d = strip_qualifiers(die) if die.tag != "DW_TAG_typedef" else type_of(die)
    if d is None:
        return
    if d.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
        for m in d.iter_children():
            if m.tag == "DW_TAG_member":
                _lock_warning(findings, key, type_of(m), depth + 1)
    elif d.tag == "DW_TAG_array_type" or d.tag == "DW_TAG_typedef":
        _lock_warning(findings, key, type_of(d), depth + 1)
