"""What changed between the old and the new build, and what the patch must therefore contain.

Functions are compared object by object (objects.py). Data is compared through DWARF (dwarf.py):
a global whose type's layout changed gets an old/new pair with sync functions; one whose layout
is the same but which points to a changed type roots heap data. Then the closure: a function
that uses changed data, or calls a function whose signature changed, or a changed compiler-made
clone, must be replaced too.
"""
import difflib
import hashlib
import os

from . import dwarf
from .common import Refused, is_generated_name
from .objects import ObjectFile, differs_only_in_lines


class TU:
    """A translation unit of the target that the patch takes code or data from."""

    def __init__(self, obj, old_rec, new_rec):
        self.obj = obj                 # object path relative to the tree
        self.old_rec, self.new_rec = old_rec, new_rec
        self.old, self.new = None, None  # ObjectFile
        self.source = (new_rec or old_rec)["source"]
        self.file = os.path.basename(self.source)  # how the target's symbol table names it

    def key(self, name, new=True):
        """The entity key of symbol `name` of this unit: "name" or "file.c:name"."""
        obj = self.new if new else self.old
        ent = obj.functions.get(name) or obj.data.get(name) if obj else None
        if ent is not None and not ent.symbol.is_global:
            return "%s:%s" % (self.file, name)
        return name


class DataChange:
    """A global whose type changed. kind: 'layout' (its bytes), 'heap' (what it points to), 'tls'."""

    def __init__(self, tu, name, kind, old_var, new_var):
        self.tu, self.name, self.kind, self.old_var, self.new_var = tu, name, kind, old_var, new_var
        self.old_users, self.new_users = set(), set()  # (tu, function) pairs

    @property
    def key(self):
        return self.tu.key(self.name)


class Analysis:
    def dwarf_for(self, cu, new):
        """The DWARF of compilation unit `cu` (an absolute source path) in the new or old binary."""
        loaded = self.new_dwarf if new else self.old_dwarf
        if cu in loaded.cu_sources:
            return loaded
        key = (cu, new)
        if key not in self._extra_dwarf:
            self._extra_dwarf[key] = dwarf.BinaryDwarf(self.new_bin if new else self.old_bin, [cu])
        return self._extra_dwarf[key]

    def __init__(self):
        self._extra_dwarf = {}
        self.tus = {}              # obj -> TU (every unit compared or scanned)
        self.kept = {}             # (obj, name) -> reason: function code the patch carries
        self.sig_changed = set()   # (obj, name): kept functions that become ADDED functions
        self.added = set()         # (obj, name): functions only the new version has
        self.removed = []          # (obj, name)
        self.data_changes = {}     # (obj, name) -> DataChange
        self.new_data = set()      # (obj, name): data only the new version has (the patch defines it)
        self.const_changed = set() # (obj, name): read-only data whose content changed (the patch carries it)
        self.removed_data = []
        self.changed_tus = []      # TUs whose object differs
        self.line_only = []        # (obj, name): differ only in shifted line numbers (not carried)
        self._line_pairs = None
        self.old_root = self.new_root = None

    def line_pairs(self):
        """(old line, new line) pairs of every C source or header the fix changed, where the two
        differ: what __LINE__ becomes in code the fix only moved."""
        if self._line_pairs is None:
            self._line_pairs = set()
            for rel in _changed_sources(self.old_root, self.new_root):
                with open(os.path.join(self.old_root, rel), errors="replace") as f:
                    old = f.readlines()
                with open(os.path.join(self.new_root, rel), errors="replace") as f:
                    new = f.readlines()
                for oi, ni, n in difflib.SequenceMatcher(None, old, new, autojunk=False).get_matching_blocks():
                    if oi != ni:
                        self._line_pairs.update((oi + k + 1, ni + k + 1) for k in range(n))
        return self._line_pairs


def _changed_sources(old_root, new_root):
    """C sources and headers (relative paths) whose content differs between the two trees."""
    out = []
    for dirpath, dirnames, filenames in os.walk(new_root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.endswith((".c", ".h")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, new_root)
            other = os.path.join(old_root, rel)
            if not os.path.isfile(other):
                continue  # a new file: no old line numbers to map
            if os.path.getsize(other) != os.path.getsize(path):
                out.append(rel)
                continue
            with open(other, "rb") as f1, open(path, "rb") as f2:
                if f1.read() != f2.read():
                    out.append(rel)
    return out


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _binary_symbols(binary):
    from elftools.elf.elffile import ELFFile
    globs, locs = set(), set()
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        current = ""
        for sym in symtab.iter_symbols() if symtab else []:
            t = sym["st_info"]["type"]
            if t == "STT_FILE":
                current = os.path.basename(sym.name)
            elif t in ("STT_FUNC", "STT_OBJECT", "STT_TLS") and sym["st_shndx"] != "SHN_UNDEF":
                if sym["st_info"]["bind"] == "STB_LOCAL":
                    locs.add((current, sym.name))
                else:
                    globs.add(sym.name)
    return globs, locs


def _in_binary(obj, file, symbols):
    globs, locs = symbols
    names = [f for f in obj.functions if not is_generated_name(f)]
    if not names:
        names = [d for d in obj.data if not is_generated_name(d)]
    if not names:
        return False
    for n in names:
        ent = obj.functions.get(n) or obj.data.get(n)
        if ent.symbol.is_global and n in globs:
            return True
        if not ent.symbol.is_global and (file, n) in locs:
            return True
    return False


def analyse(old_build, new_build, binary_rel, findings):
    """Compares the two builds; returns an Analysis."""
    a = Analysis()
    a.old_root, a.new_root = old_build.root, new_build.root
    old_bin, new_bin = old_build.path(binary_rel), new_build.path(binary_rel)
    old_syms, new_syms = _binary_symbols(old_bin), _binary_symbols(new_bin)
    objs = sorted(set(old_build.compiles) | set(new_build.compiles))
    for obj in objs:
        orec, nrec = old_build.compiles.get(obj), new_build.compiles.get(obj)
        tu = TU(obj, orec, nrec)
        opath = old_build.path(obj) if orec else None
        npath = new_build.path(obj) if nrec else None
        if opath and not os.path.exists(opath):
            opath = None
        if npath and not os.path.exists(npath):
            npath = None
        if opath and npath and _digest(opath) == _digest(npath):
            a.tus[obj] = tu  # unchanged: parsed later only if it uses changed data
            continue
        if nrec and nrec.get("lang") == "c++" or orec and orec.get("lang") == "c++":
            probe = ObjectFile(npath or opath)
            if not _in_binary(probe, tu.file, new_syms if npath else old_syms):
                continue
            raise Refused("the fix changes the C++ translation unit %s: the generator handles C only (C++ name "
                          "mangling, inline functions and templates in COMDAT groups, vtables and exception tables "
                          "are not handled). Write this patch by hand (patch-format/README.md shows a C++ patch), or "
                          "keep the fix to C files" % tu.source)
        tu.old = ObjectFile(opath) if opath else None
        tu.new = ObjectFile(npath) if npath else None
        if (tu.new and tu.new.lto) or (tu.old and tu.old.lto):
            raise Refused("%s was compiled with -flto: link-time optimisation rewrites functions across files, so "
                          "objects cannot be compared; build without -flto" % tu.source)
        in_old = tu.old is not None and _in_binary(tu.old, tu.file, old_syms)
        in_new = tu.new is not None and _in_binary(tu.new, tu.file, new_syms)
        if not in_old and not in_new:
            if tu.old or tu.new:
                findings.note("%s changed but is not part of %s: ignored" % (tu.source, binary_rel))
            continue
        if not in_old:
            tu.old = None
        if not in_new:
            tu.new = None
        a.tus[obj] = tu
        a.changed_tus.append(tu)
    _compare_units(a, old_build, new_build, old_bin, new_bin, binary_rel, findings)
    return a


def _compare_units(a, old_build, new_build, old_bin, new_bin, binary_rel, findings):
    # DWARF of the changed units only (both builds ran in the same directory: same paths).
    sources = {os.path.join(_src_root(new_build), tu.source) for tu in a.changed_tus}
    old_dw = dwarf.BinaryDwarf(old_bin, sources)
    new_dw = dwarf.BinaryDwarf(new_bin, sources)
    a.old_dwarf, a.new_dwarf = old_dw, new_dw
    src_root = _src_root(new_build)
    a.src_root, a.old_bin, a.new_bin = src_root, old_bin, new_bin
    old_vars = {(v.cu, v.symbol): v for v in old_dw.variables if v.symbol}
    new_vars = {(v.cu, v.symbol): v for v in new_dw.variables if v.symbol}
    for tu in a.changed_tus:
        cu = os.path.join(src_root, tu.source)
        ofuncs = tu.old.functions if tu.old else {}
        nfuncs = tu.new.functions if tu.new else {}
        for name, fn in nfuncs.items():
            old = ofuncs.get(name)
            if old is None:
                a.kept[(tu.obj, name)] = "added"
                if not is_generated_name(name):
                    a.added.add((tu.obj, name))
            elif old.identity != fn.identity:
                if differs_only_in_lines(tu.old, old, tu.new, fn, a.line_pairs()):
                    a.line_only.append((tu.obj, name))
                    continue
                a.kept[(tu.obj, name)] = "changed"
                if not is_generated_name(name):
                    osig = dwarf.function_signature(old_dw.functions.get((cu, name)))
                    nsig = dwarf.function_signature(new_dw.functions.get((cu, name)))
                    if osig != nsig and osig is not None and nsig is not None:
                        a.sig_changed.add((tu.obj, name))
        for name in ofuncs:
            if name not in nfuncs and not is_generated_name(name):
                a.removed.append((tu.obj, name))
        odata = tu.old.data if tu.old else {}
        ndata = tu.new.data if tu.new else {}
        for name, d in ndata.items():
            old = odata.get(name)
            if old is None:
                a.new_data.add((tu.obj, name))
                continue
            ov, nv = old_vars.get((cu, name)), new_vars.get((cu, name))
            kind = None
            if ov is not None and nv is not None:
                if dwarf.signature(ov.type, False) != dwarf.signature(nv.type, False):
                    kind = "layout"
                elif dwarf.signature(ov.type, True) != dwarf.signature(nv.type, True):
                    kind = "heap"
            elif old.size != d.size:
                kind = "layout"
            if kind and (d.tls or old.tls):
                kind = "tls"
            if kind:
                a.data_changes[(tu.obj, name)] = DataChange(tu, name, kind, ov, nv)
            elif old.identity != d.identity:
                if not d.writable and not d.tls:
                    a.const_changed.add((tu.obj, name))
                else:
                    what = "function-pointer table " if nv is not None and dwarf.contains_function_pointers(nv.type) \
                        else ""
                    findings.warn("initializer-changed" if not what else "fnptr-table",
                                  "the initial value of %s%s (%s) changed: the running process keeps the value it "
                                  "has; if the fix needs the new value, set it in a pre-update callback (--author)"
                                  % (what, tu.key(name), tu.source))
        for name in odata:
            if name not in ndata and not is_generated_name(name):
                a.removed_data.append((tu.obj, name))


def _src_root(build):
    """Where both trees were built (WORKDIR/src): the paths their DWARF names."""
    return os.path.join(os.path.dirname(build.root), "src")
