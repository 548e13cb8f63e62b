"""The patch's contents, decided: which symbols each unit's assembly keeps (and under which
name), how every other reference reaches the target, and the descriptor's entries."""
import os

from . import asmpatch, dwarf
from .common import Refused, is_generated_name


class Plan:
    def __init__(self, analysis, versions, old_binary, findings):
        self.a, self.v, self.old_bin, self.findings = analysis, versions, old_binary, findings
        self.suffix = versions.suffix
        self.refs = asmpatch.TargetRefs()
        self.replaced = {}       # (obj, name) -> (old spec, new symbol)
        self.added_fns = {}      # (obj, name) -> new symbol (signature changed, or only in the new version)
        self.kept_data = {}      # (obj, name) -> new symbol
        self.global_renames = {} # global name -> new symbol referenced directly across units
        self.global_replaced = {}  # global name -> spec called through the old entry
        self.static_locals = {}  # (obj, asm name) -> target spec
        self._decide()

    def new_name(self, name, tu=None):
        """name_vN, unique in the patch (two units' statics of one name get the file in it)."""
        if not hasattr(self, "_taken"):
            self._taken = set()
            for t in self.a.contributing:
                if t.new:
                    self._taken |= set(t.new.functions) | set(t.new.data)
        cands = [name + self.suffix]
        if tu is not None:
            cands.append("%s__%s%s" % (name, tu.file.replace(".", "_").replace("-", "_"), self.suffix))
        cands.append(name + "__polus" + self.suffix)
        for cand in cands:
            if cand not in self._taken:
                self._taken.add(cand)
                return cand
        raise Refused("cannot find a free name for %s" % name)

    def _in_old_binary(self, tu, name):
        return self.old_bin.lookup(tu.key(name, new=tu.new is not None)) is not None

    def _decide(self):
        a = self.a
        for (obj, name), why in sorted(a.kept.items()):
            if is_generated_name(name):
                continue
            tu = a.tus[obj]
            existed = tu.old is not None and name in tu.old.functions and self._in_old_binary(tu, name)
            new = self.new_name(name, tu)
            global_ = tu.new.functions[name].symbol.is_global
            if existed and (obj, name) not in a.sig_changed:
                spec = self.v.call(tu.key(name))
                self.replaced[(obj, name)] = (spec, new)
                if global_:
                    self.global_replaced[name] = spec
            else:
                self.added_fns[(obj, name)] = new
                if global_:
                    self.global_renames[name] = new
        for key in list(a.data_changes) + sorted(a.new_data) + sorted(a.const_changed):
            obj, name = key
            tu = a.tus[obj]
            ent = tu.new.data.get(name) if tu.new else None
            if ent is None:
                continue
            new = self.new_name(name, tu) if not is_generated_name(name) else name
            self.kept_data[key] = new
            if ent.symbol.is_global:
                self.global_renames[name] = new

    # -- per unit ----------------------------------------------------------------------------

    def unit_plan(self, tu, asm_text):
        a = self.a
        _, segments = asmpatch.parse(asm_text)
        defined = set()
        for seg in segments:
            defined |= seg.defines
        roots = set()
        for (obj, name) in a.kept:
            # A compiler-made part is carried only for the code calling it: the recompile (with
            # -ffixed-r11) may split or clone differently, and then its callers use their own.
            if obj == tu.obj and (name in defined or not is_generated_name(name)):
                roots.add(name)
        for (obj, name) in self.kept_data:
            if obj == tu.obj:
                roots.add(name)
        # Symbols whose definition the unit carries under a new name.
        renames = {}
        for (obj, name), (_, new) in self.replaced.items():
            if obj == tu.obj:
                renames[name] = new
        for (obj, name), new in list(self.added_fns.items()) + list(self.kept_data.items()):
            if obj == tu.obj:
                renames[name] = new
        replaced_here = {name: spec for (obj, name), (spec, _) in self.replaced.items() if obj == tu.obj}
        cache = {}

        def resolve(name):
            if name not in cache:
                cache[name] = self._resolve(tu, name, defined, roots, renames, replaced_here)
            return cache[name]

        def define(name):
            if name in renames:
                return ("keep", renames[name])
            return resolve(name) if resolve(name)[0] == "keep" else ("drop", name)
        plan = asmpatch.UnitPlan(tu.obj, roots, resolve, None)
        plan.define = define
        return plan

    def _resolve(self, tu, name, defined, roots, renames, replaced_here):
        if name in replaced_here:
            return ("import", replaced_here[name], "function")
        if name in renames:
            return ("keep", renames[name])
        if name in roots:
            return ("keep", name)
        if name in defined:
            ent_f = tu.new.functions.get(name) if tu.new else None
            ent_d = tu.new.data.get(name) if tu.new else None
            if is_generated_name(name):
                if ent_d is not None and (ent_d.writable or ent_d.tls):
                    return ("import", self._static_local(tu, name), "data")
                return ("keep", name)  # clones, parts, constant tables: compiled with the new code
            key = tu.key(name)
            in_target = self.old_bin.lookup(key) is not None or self.v.knows(key)
            if ent_f is not None or (ent_d is None and not in_target):
                if in_target:
                    return ("import", self.v.call(key), "function")
                if ent_f is not None:
                    self.findings.note("%s is not in the old binary (inlined everywhere or discarded): the patch "
                                       "carries its own copy" % key)
                    return ("keep", name)
            if ent_d is not None:
                if ent_d.tls:
                    if in_target:
                        raise Refused("the new code uses the thread-local variable %s of the running target: each "
                                      "thread's copy lives in its own TLS block, which a patch cannot reach by "
                                      "symbol (Polus imports addresses). Keep the fix away from it" % key)
                    return ("keep", name)
                if in_target:
                    return ("import", self.v.data(key), "data")
                if not ent_d.writable:
                    return ("keep", name)
                raise Refused("%s (in %s) is not in the old binary, yet the new code uses it and it is writable "
                              "data: the patch cannot tell where its running instance is" % (key, tu.source))
            return ("keep", name)
        # Defined in another unit, a library, or an earlier patch.
        if name in self.global_renames:
            return ("keep", self.global_renames[name])
        if name in self.global_replaced:
            return ("import", self.global_replaced[name], "function")
        if self.v.knows(name):
            # An earlier patch's entity: live data where it put it; a function called as the
            # file says ("call" after a signature change, else its own name, whose entry jumps to
            # the newest "code").
            ent = self.v.state["entities"][name]
            if "data" in ent:
                return ("import", ent["data"], "data")
            return ("import", self.v.call(name), "function")
        found = self.old_bin.lookup(name)
        if found is not None and ":" not in name:
            return ("import", name, "function" if found[1] else "data")
        return ("extern", name)

    def _static_local(self, tu, name):
        """The target's symbol for a function-static variable `name` (x.0) of the new unit, matched
        through DWARF by its function and name (gcc numbers them per build)."""
        key = (tu.obj, name)
        if key in self.static_locals:
            return self.static_locals[key]
        cu = os.path.join(self.a.src_root, tu.source)
        new_dw = self.a.dwarf_for(cu, new=True)
        old_dw = self.a.dwarf_for(cu, new=False)
        nv = next((v for v in new_dw.variables if v.cu == cu and v.symbol == name), None)
        if nv is None:
            raise Refused("cannot tell which variable %s of %s is (no DWARF for it)" % (name, tu.source))
        ov = next((v for v in old_dw.variables if v.cu == cu and v.scope == nv.scope and v.name == nv.name), None)
        if ov is None or ov.symbol is None:
            raise Refused("the static variable %s of %s() (%s) is new, and writable: give it file scope, or make it "
                          "part of a changed function's data" % (nv.name, nv.scope, tu.source))
        if dwarf.signature(ov.type, True) != dwarf.signature(nv.type, True):
            raise Refused("the static variable %s of %s() (%s) changed type: function-static data of a changed type "
                          "is not converted; give it file scope" % (nv.name, nv.scope, tu.source))
        spec = "%s:%s" % (tu.file, ov.symbol)
        self.static_locals[key] = spec
        return spec
