"""Object-level comparison: every function and data object of a relocatable object, reduced to
an identity that ignores where things landed.

A function's identity is its section bytes with every relocated field zeroed, plus, for each
relocation, what it refers to: a symbol by name, or for a section-relative reference the entity
at the referenced offset (a named symbol there, a string or constant of a merge section by its
content, an anonymous table by its own identity). So a function that only moved, or whose
callees moved, or whose string constants were laid out differently, keeps its identity; one
whose inlined callee changed does not (its bytes changed). PC-relative references are resolved
to the referenced offset with the length of the instruction that holds them (capstone).
"""
import hashlib

import capstone
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from .common import Refused, is_generated_name

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS, SHF_TLS = 0x1, 0x2, 0x4, 0x10, 0x20, 0x400
# x86-64 relocation types: field size, and whether the value is PC-relative.
RELOC_SIZE = {1: 8, 2: 4, 4: 4, 9: 4, 10: 4, 11: 4, 19: 4, 20: 4, 21: 4, 22: 4, 23: 4, 24: 8, 26: 4, 17: 8,
              18: 8, 16: 8, 41: 4, 42: 4, 34: 4, 35: 0}
PC_RELATIVE = {2, 4, 9, 19, 20, 22, 24, 26, 41, 42, 34}
TLS_RELOCS = {16, 17, 18, 19, 20, 21, 22, 23, 34, 35}
_disasm = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


class Section:
    __slots__ = ("index", "name", "type", "flags", "size", "entsize", "data", "relocs", "symbols", "_ends")

    def __init__(self, index, name, sh):
        self.index, self.name = index, name
        self.type, self.flags, self.size, self.entsize = sh["sh_type"], sh["sh_flags"], sh["sh_size"], sh["sh_entsize"]
        self.data = b""
        self.relocs = []   # (offset, type, symbol index, addend), sorted by offset
        self.symbols = []  # named FUNC/OBJECT/TLS symbols defined here, by value
        self._ends = None

    @property
    def executable(self):
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def writable(self):
        return bool(self.flags & SHF_WRITE)

    @property
    def tls(self):
        return bool(self.flags & SHF_TLS)

    def instruction_end(self, offset):
        """End of the instruction that holds byte `offset` (executable sections only)."""
        if self._ends is None:
            self._ends = []
            for addr, size, _, _ in _disasm.disasm_lite(self.data, 0):
                self._ends.append((addr, addr + size))
        lo, hi = 0, len(self._ends)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._ends[mid][1] <= offset:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self._ends) and self._ends[lo][0] <= offset:
            return self._ends[lo][1]
        return offset + 4


class Symbol:
    __slots__ = ("index", "name", "type", "bind", "shndx", "value", "size", "visibility")

    def __init__(self, index, sym):
        self.index, self.name = index, sym.name
        self.type = sym["st_info"]["type"]
        self.bind = sym["st_info"]["bind"]
        self.shndx = sym["st_shndx"]
        self.value, self.size = sym["st_value"], sym["st_size"]
        self.visibility = sym["st_other"]["visibility"]

    @property
    def is_global(self):
        return self.bind in ("STB_GLOBAL", "STB_WEAK", "STB_GNU_UNIQUE")

    @property
    def defined(self):
        return isinstance(self.shndx, int) and self.shndx > 0


class Entity:
    """A function or data object defined in an object: its identity and what it refers to."""
    __slots__ = ("name", "kind", "symbol", "section", "identity", "refs", "tls_refs", "size", "writable", "tls")

    def __init__(self, name, kind, symbol, section):
        self.name, self.kind, self.symbol, self.section = name, kind, symbol, section
        self.identity, self.refs, self.tls_refs = None, set(), set()
        self.size = symbol.size
        self.writable = section.writable
        self.tls = section.tls


class ObjectFile:
    """One relocatable object (.o) of a build."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_type"] != "ET_REL" or elf["e_machine"] != "EM_X86_64":
                raise Refused("%s is not an x86-64 relocatable object" % path)
            self.sections = []
            for i, sec in enumerate(elf.iter_sections()):
                s = Section(i, sec.name, sec.header)
                if sec["sh_type"] != "SHT_NOBITS" and (sec["sh_flags"] & SHF_ALLOC):
                    s.data = sec.data()
                self.sections.append(s)
            self.lto = any(s.name.startswith(".gnu.lto_") for s in self.sections)
            symtab = elf.get_section_by_name(".symtab")
            self.symbols = [Symbol(i, sym) for i, sym in enumerate(symtab.iter_symbols())] if symtab else []
            for sec in elf.iter_sections():
                if isinstance(sec, RelocationSection) and sec["sh_type"] == "SHT_RELA":
                    target = self.sections[sec["sh_info"]]
                    if not (target.flags & SHF_ALLOC):
                        continue
                    target.relocs = sorted((r["r_offset"], r["r_info_type"], r["r_info_sym"], r["r_addend"])
                                           for r in sec.iter_relocations())
        self.functions, self.data, self.undefined = {}, {}, set()
        for sym in self.symbols:
            if not sym.name:
                continue
            if not sym.defined:
                if sym.shndx == "SHN_UNDEF":
                    self.undefined.add(sym.name)
                continue
            sec = self.sections[sym.shndx]
            if sym.type == "STT_FUNC":
                self.functions[sym.name] = Entity(sym.name, "function", sym, sec)
                sec.symbols.append(sym)
            elif sym.type in ("STT_OBJECT", "STT_TLS"):
                self.data[sym.name] = Entity(sym.name, "data", sym, sec)
                sec.symbols.append(sym)
        for sec in self.sections:
            sec.symbols.sort(key=lambda s: s.value)
        self._anon_identity = {}
        for ent in list(self.functions.values()) + list(self.data.values()):
            self._fill(ent)

    # -- what a relocation refers to ----------------------------------------------------------

    def _entity_at(self, sec, offset):
        """The named symbol whose bytes hold `offset` (or that ends exactly there: a pointer one
        past an array), preferring the one that contains it."""
        end_match = None
        for sym in sec.symbols:
            if sym.value <= offset < sym.value + max(sym.size, 1):
                return sym
            if offset == sym.value + sym.size and sym.size and end_match is None:
                end_match = sym
        return end_match

    def _merge_content(self, sec, offset):
        if sec.flags & SHF_STRINGS:
            end = sec.data.find(b"\0", offset)
            return sec.data[offset:end if end >= 0 else len(sec.data)]
        size = sec.entsize or 8
        start = offset - offset % size
        return sec.data[start:start + size]

    def describe(self, holder, reloc):
        """What relocation `reloc` of section `holder` refers to, independent of layout:
        (kind, name or content, offset inside it). Also the named symbol, if any."""
        offset, rtype, symidx, addend = reloc
        sym = self.symbols[symidx]
        # Assembler-local labels (.LC0 in a merge section) are numbered per build: resolve them
        # like section-relative references, by what they point at.
        local_label = sym.defined and sym.type == "STT_NOTYPE" and not sym.is_global
        if sym.type != "STT_SECTION" and not local_label:
            return ("sym", sym.name, addend), sym.name
        target = self.sections[sym.shndx]
        at = addend + (sym.value if local_label else 0)
        if rtype in PC_RELATIVE and holder.executable:
            at += holder.instruction_end(offset) - offset
        elif rtype in PC_RELATIVE:
            at += 4
        named = self._entity_at(target, at)
        if named is not None and named.name:
            return ("sym", named.name, addend - named.value), named.name
        if target.flags & SHF_MERGE:
            return ("merge", target.name.split(".")[1] if "." in target.name[1:] else target.name,
                    self._merge_content(target, at), at - addend), None
        if target.executable:
            return ("text", target.name, addend), None
        return ("anon", self._section_identity(target), addend), None

    def _section_identity(self, sec):
        """Identity of an anonymous section (jump tables, constant pools): bytes and references."""
        if sec.index in self._anon_identity:
            return self._anon_identity[sec.index]
        self._anon_identity[sec.index] = "cycle:" + sec.name
        h = hashlib.sha1(sec.name.split(".")[1].encode() if "." in sec.name[1:] else b"")
        data = bytearray(sec.data)
        keys = []
        for r in sec.relocs:
            size = RELOC_SIZE.get(r[1], 4)
            data[r[0]:r[0] + size] = b"\0" * size
            sym = self.symbols[r[2]]
            if sym.type == "STT_SECTION" or (sym.defined and sym.type == "STT_NOTYPE" and not sym.is_global):
                tsec = self.sections[sym.shndx]
                keys.append((r[0], r[1], "sec", tsec.name if tsec.executable else tsec.name.split(".")[1:2], r[3]))
            else:
                keys.append((r[0], r[1], sym.name, r[3]))
        h.update(bytes(data))
        h.update(repr(keys).encode())
        ident = h.hexdigest()
        self._anon_identity[sec.index] = ident
        return ident

    def body(self, ent):
        """A function's or datum's bytes with every relocated field zeroed, and what each
        relocation refers to ((offset, type, key) in order); None for .bss data."""
        sec, sym = ent.section, ent.symbol
        if sec.type == "SHT_NOBITS":
            return None
        start, end = sym.value, sym.value + sym.size
        data = bytearray(sec.data[start:end])
        keys = []
        for r in sec.relocs:
            if not (start <= r[0] < end):
                continue
            size = RELOC_SIZE.get(r[1], 4)
            data[r[0] - start:r[0] - start + size] = b"\0" * size
            key, name = self.describe(sec, r)
            keys.append((r[0] - start, r[1], key))
            if name and name != ent.name:
                ent.refs.add(name)
                if r[1] in TLS_RELOCS:
                    ent.tls_refs.add(name)
        return data, keys

    def _fill(self, ent):
        h = hashlib.sha1()
        h.update(ent.kind.encode())
        body = self.body(ent)
        if body is None:
            h.update(b"bss %d" % ent.symbol.size)
        else:
            h.update(bytes(body[0]))
            h.update(repr(body[1]).encode())
        ent.identity = h.hexdigest()

    def parts_of(self, name):
        """The compiler-made pieces of function `name` (name.cold, name.part.0, ...)."""
        return [f for f in self.functions if is_generated_name(f) and f.split(".")[0] == name]


# Instructions that pass a line number to a reporting function (serverAssert's __LINE__ lands in
# a register, a stack slot or a push).
_LINE_CARRIERS = {"mov", "push"}
_detail = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_detail.detail = True


def differs_only_in_lines(old_obj, old_ent, new_obj, new_ent, line_pairs):
    """True if two versions of a function differ only in immediates that are line numbers the
    fix shifted (`line_pairs`: (old line, new line) of the changed files): the same instructions,
    the same relocations, and every differing instruction a mov or push of an immediate whose
    old and new values are such a pair (__LINE__ in an assertion). kpatch-build ignores the same
    kind of change for the kernel's WARN/BUG macros."""
    if old_ent.kind != "function" or new_ent.kind != "function":
        return False
    ob, nb = old_obj.body(old_ent), new_obj.body(new_ent)
    if ob is None or nb is None or len(ob[0]) != len(nb[0]) or ob[1] != nb[1] or ob[0] == nb[0]:
        return False
    oi = list(_detail.disasm(bytes(ob[0]), 0))
    ni = list(_detail.disasm(bytes(nb[0]), 0))
    if len(oi) != len(ni) or sum(i.size for i in oi) != len(ob[0]):
        return False
    for a, b in zip(oi, ni):
        if a.bytes == b.bytes:
            continue
        if a.mnemonic != b.mnemonic or a.size != b.size or a.mnemonic not in _LINE_CARRIERS:
            return False
        if not a.imm_offset or a.imm_offset != b.imm_offset or a.bytes[:a.imm_offset] != b.bytes[:b.imm_offset]:
            return False
        oimm = [o.imm for o in a.operands if o.type == capstone.x86.X86_OP_IMM]
        nimm = [o.imm for o in b.operands if o.type == capstone.x86.X86_OP_IMM]
        if len(oimm) != 1 or len(nimm) != 1 or (oimm[0], nimm[0]) not in line_pairs:
            return False
    return True
