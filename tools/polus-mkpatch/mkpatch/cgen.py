"""The generated patch source (patch.c): types, slots, sync functions, callbacks, descriptor."""
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


def generate(plan, units, build_id, name, description, author_file, findings, version):
    """Returns (patch.c text, author skeleton text or None, {entity: version fields})."""
    a = plan.a
    types = TypeWriter(plan.suffix)
    desc = Descriptor()
    body, decls, skeleton = [], [], []
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
            for fn, src_t, dst_t, dst_new in ((fwd, ot, nt, True), (back, nt, ot, False)):
                cw = CopyWriter(types, findings, key)
                cw.copy("(*dst)", dst_t, "(*src)", src_t, key, dst_new)
                for link in cw.heap_links:
                    findings.warn("heap", "%s: %s points to a changed type; the objects it leads to are not converted "
                                          "(write a pre-update callback; see the heap skeleton)" % (key, link))
                src_decl = types.declare(src_t, "*src", not dst_new)
                dst_decl = types.declare(dst_t, "*dst", dst_new)
                guard = "POLUS_AUTHOR_SYNC_" + ident
                body.append("#ifndef %s" % guard)
                body.append("/* After a write to the %s %s: bring the %s one up to date. */" %
                            ("old" if dst_new else "new", key, "new" if dst_new else "old"))
                body.append("static void %s(const struct polus_sync_args *args) {" % fn)
                body.append("    const %s = (const void *)args->written;" % src_decl)
                body.append("    %s = (void *)args->counterpart;" % dst_decl)
                body.extend(line.replace("(*dst).", "dst->").replace("(*src).", "src->") for line in cw.lines)
                body.append("}")
                body.append("#endif")
                for p in cw.placeholders:
                    findings.placeholder("sync", p + " (define %s and both sync functions in an author file)" % guard)
        else:  # heap: the global keeps its layout, what it points to changed
            flags = "POLUS_DATA_HEAP_ROOT"
            fwd = back = None
            pairs = _pointee_pairs(ot, nt)
            findings.warn("heap", "%s (%s) leads to heap data of a changed type (%s): the generator cannot know how "
                                  "that data is shaped; fill in the pre-update callback of the skeleton (--author)"
                          % (key, dwarf.tag_name(ot), ", ".join("%s -> %s" % (dwarf.tag_name(o), dwarf.tag_name(n))
                                                               for o, n in pairs)))
            for po, pn in pairs:
                body.extend(_node_functions(types, findings, po, pn, key))
            guard = "POLUS_AUTHOR_HEAP_" + ident
            findings.placeholder("heap", "%s: define %s and polus_author_heap_%s() in an author file (see "
                                         "author-skeleton.c)" % (key, guard, ident))
            body.append("#ifndef %s" % guard)
            body.append('#error "polus-mkpatch: heap data reachable through %s changed type: write '
                        'polus_author_heap_%s() (see author-skeleton.c) and pass it with --author"' % (key, ident))
            body.append("#endif")
            callbacks_pre.append("polus_author_heap_%s" % ident)
            skeleton.append(_heap_skeleton(types, key, ident, slot, new_sym, ot, nt, pairs))
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
    if author_file:
        out.append("/* ---- The author's code ---- */")
        out.append('#include "%s"' % author_file)
    out.append("/* ---- Sync functions ---- */")
    out.extend(body)
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
    for cb in callbacks_pre:
        desc.callbacks.append("{POLUS_CB_PRE_UPDATE, 0, %s}" % cb)
    out.append(_arrays(desc, build_id))
    out.append('POLUS_PATCH("%s", "%s", %s);' % (name, description.replace('"', "'"), _counts(desc, build_id)))
    sk = None
    if skeleton:
        sk = ("/*\n * Author file skeleton for patch %d (%s): copy it, fill it in, and pass it to polus-mkpatch with\n"
              " * --author FILE. It is compiled inside the generated patch.c, after the types and slots.\n */\n"
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


def _heap_skeleton(types, key, ident, slot, new_sym, ot, nt, pairs):
    lines = ["#define POLUS_AUTHOR_HEAP_%s 1" % ident,
             "/*",
             " * Pre-update callback for the heap data reachable from %s. It runs in the commit pause" % key,
             " * (every other thread stopped, none inside malloc) and again with args->rollback set on a",
             " * rollback. Old global: *%s. New global: %s." % (slot, new_sym),
             " * For each old node: allocate a new one, copy it with the generated polus_copy_*() function,",
             " * link it like the old one, and register the pair so writes are synced while the update syncs:",
             " *   polus_register_heap_data(old, new, sizeof *old, sizeof *new, polus_sync_old_T, polus_sync_new_T);",
             " * On rollback, copy each new node back into its old one and register the pairs again.",
             " * Return non-zero to cancel the update (nothing is changed then).",
             " */",
             "static int polus_author_heap_%s(const struct polus_callback_args *args) {" % ident,
             "    if (!polus_register_heap_data) return -1; /* not running under the Polus agent */",
             "    (void)args;",
             "    /* fill in */",
             "    return -1;",
             "}"]
    return "\n".join(lines) + "\n"
