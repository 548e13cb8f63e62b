"""C declarations of the old and new types, rebuilt from DWARF, for the generated sync code.

Every struct and union is written `packed` with explicit padding, so its members sit exactly at
the offsets DWARF gives, and `_Static_assert`s on every size and offset make a wrong rebuild a
compile error rather than a wrong copy. Types of the project keep their names on the old side and
get the version suffix on the new side when they changed ("renamed types", as in the POLUS
paper's Fig. 3); types from system headers are written under a `polus_` prefix (or spelled out,
for typedefs) so the author's code may include any system header without a clash. Bit-fields are
kept as raw bytes (`__polus_bits_N`) and copied with polus_copy_bits().
"""
import hashlib

from . import dwarf
from .dwarf import attr, type_of, strip_qualifiers

SYSTEM_PREFIXES = ("/usr/include", "/usr/lib/gcc", "/usr/local/include")


def decl_path(die):
    idx = attr(die, "DW_AT_decl_file")
    if idx is None:
        return ""
    cu = die.cu
    try:
        lp = die.dwarfinfo.line_program_for_CU(cu)
        entries = lp.header["file_entry"]
        version = lp.header["version"]
        entry = entries[idx] if version >= 5 else entries[idx - 1]
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        dirs = lp.header["include_directory"]
        d = dirs[entry.dir_index] if version >= 5 else (dirs[entry.dir_index - 1] if entry.dir_index else b"")
        d = d.decode() if isinstance(d, bytes) else d
        return name if name.startswith("/") else d + "/" + name
    except Exception:
        return ""


def is_system(die):
    return decl_path(die).startswith(SYSTEM_PREFIXES)


def _short_hash(text):
    return hashlib.sha1(text.encode()).hexdigest()[:8]


class TypeWriter:
    """Writes C declarations for DWARF types of both builds into one translation unit."""

    def __init__(self, suffix):
        self.suffix = suffix
        self.names = {}        # (tag, name, deep signature) -> C name
        self.taken = {}        # C name -> deep signature
        self.emitted = set()   # C names whose definition is written
        self.forward = []      # forward declarations
        self.out = []          # definitions, in dependency order
        self.asserts = []
        self.fn_types = {}

    # -- naming -----------------------------------------------------------------------------

    def c_name(self, die, new_side):
        """The C name of a struct/union/typedef DIE (without the struct/union keyword)."""
        sig = dwarf.signature(die if die.tag != "DW_TAG_typedef" else type_of(die), True)
        name = attr(die, "DW_AT_name")
        base = ("polus_" + name if name and is_system(die) else name) or "polus_anon_" + _short_hash(sig)
        key = (die.tag, base, sig)
        if key in self.names:
            return self.names[key]
        cand = base
        if cand in self.taken and self.taken[cand] != sig:
            cand = base + self.suffix if new_side else base + "_old"
            while cand in self.taken and self.taken[cand] != sig:
                cand += "_"
        self.taken[cand] = sig
        self.names[key] = cand
        return cand

    # -- declarators --------------------------------------------------------------------------

    def declare(self, die, inner, new_side):
        """C declaration of `inner` (a name or abstract declarator) with type `die`."""
        if die is None:
            return "void " + inner if inner else "void"
        t = die.tag
        if t in ("DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type"):
            return self.declare(type_of(die), inner, new_side)
        if t == "DW_TAG_atomic_type":
            target = strip_qualifiers(type_of(die))
            if target is not None and target.tag in ("DW_TAG_base_type", "DW_TAG_pointer_type",
                                                     "DW_TAG_enumeration_type"):
                return "_Atomic " + self.declare(type_of(die), inner, new_side)
            return self.declare(type_of(die), inner, new_side)
        if t == "DW_TAG_base_type":
            name = attr(die, "DW_AT_name")
            if name.startswith("complex "):
                name = "_Complex " + name[8:]
            return name + (" " + inner if inner else "")
        if t == "DW_TAG_enumeration_type":
            size = attr(die, "DW_AT_byte_size", 4)
            signed = any((attr(e, "DW_AT_const_value") or 0) < 0 for e in die.iter_children())
            base = {1: "char", 2: "short", 4: "int", 8: "long"}.get(size, "int")
            return ("signed " if signed else "unsigned ") + base + (" " + inner if inner else "")
        if t == "DW_TAG_typedef":
            name = attr(die, "DW_AT_name")
            target = type_of(die)
            if is_system(die) or name.startswith("__") or target is None:
                return self.declare(target, inner, new_side)
            cname = self.c_name(die, new_side)
            if cname not in self.emitted:
                self.emitted.add(cname)
                self.out.append("typedef %s;" % self.declare(target, cname, new_side))
            return cname + (" " + inner if inner else "")
        if t == "DW_TAG_pointer_type":
            target = type_of(die)
            inner2 = "*" + inner
            if target is not None and strip_qualifiers(target) is not None and \
                    strip_qualifiers(target).tag in ("DW_TAG_array_type", "DW_TAG_subroutine_type"):
                inner2 = "(*" + inner + ")"
            if target is not None and strip_qualifiers(target) is not None and \
                    strip_qualifiers(target).tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                return self.aggregate_ref(strip_qualifiers(target), new_side, need_complete=False) + " " + inner2
            return self.declare(target, inner2, new_side)
        if inner.startswith("*") and t in ("DW_TAG_array_type", "DW_TAG_subroutine_type"):
            inner = "(" + inner + ")"  # a pointer to an array or function: T (*p)[N], not T *p[N]
        if t == "DW_TAG_array_type":
            dims = "".join("[%s]" % (d if d is not None else "") for d in dwarf.array_dims(die))
            return self.declare(type_of(die), inner + dims, new_side)
        if t == "DW_TAG_subroutine_type":
            params = [self.declare(type_of(p), "", new_side) for p in die.iter_children()
                      if p.tag == "DW_TAG_formal_parameter"]
            if any(p.tag == "DW_TAG_unspecified_parameters" for p in die.iter_children()):
                params.append("...")
            return self.declare(type_of(die), "%s(%s)" % (inner, ", ".join(params) or "void"), new_side)
        if t in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            return self.aggregate_ref(die, new_side, need_complete=True) + (" " + inner if inner else "")
        raise ValueError("cannot write a C declaration for %s" % t)

    def aggregate_ref(self, die, new_side, need_complete):
        kw = "struct" if die.tag == "DW_TAG_structure_type" else "union"
        cname = self.c_name(die, new_side)
        if attr(die, "DW_AT_declaration") or not need_complete:
            fwd = "%s %s;" % (kw, cname)
            if fwd not in self.forward:
                self.forward.append(fwd)
            if not attr(die, "DW_AT_declaration") and not need_complete:
                self._pending = getattr(self, "_pending", [])
                self._pending.append((die, new_side))
            return "%s %s" % (kw, cname)
        self.define(die, cname, new_side)
        return "%s %s" % (kw, cname)

    def flush_pending(self):
        """Defines the structs only pointed to (so author code can follow the pointers)."""
        while getattr(self, "_pending", None):
            die, new_side = self._pending.pop()
            self.define(die, self.c_name(die, new_side), new_side)

    # -- definitions -----------------------------------------------------------------------------

    def define(self, die, cname, new_side):
        if cname in self.emitted:
            return
        self.emitted.add(cname)
        kw = "struct" if die.tag == "DW_TAG_structure_type" else "union"
        size = attr(die, "DW_AT_byte_size", 0)
        align = attr(die, "DW_AT_alignment") or self.alignment(die)
        lines, cursor, n = [], 0, 0
        members = [m for m in die.iter_children() if m.tag == "DW_TAG_member"]
        anon = 0
        bit_end = -1
        for m in sorted(members, key=lambda m: dwarf.member_bits(m)[1] // 8 if dwarf.member_bits(m)
                        else dwarf.member_offset(m)):
            bits = dwarf.member_bits(m)
            if bits:
                first, last = bits[1] // 8, (bits[1] + bits[0] + 7) // 8
                start = max(first, cursor)
                if last > start:
                    lines.append("    unsigned char __polus_bits_%d[%d];" % (start, last - start))
                    cursor = last
                bit_end = last
                continue
            off = dwarf.member_offset(m)
            if kw == "struct":
                if off < cursor:
                    continue  # overlaps a bit-field's storage: cannot be written as C; copied as bytes
                if off > cursor:
                    lines.append("    unsigned char __polus_pad_%d[%d];" % (n, off - cursor))
                    n += 1
            name = attr(m, "DW_AT_name")
            if not name:
                name = "__polus_anon_%d" % anon
                anon += 1
            lines.append("    %s;" % self.declare(type_of(m), name, new_side))
            if kw == "struct":
                cursor = off + dwarf.byte_size(type_of(m))
                self.asserts.append("_Static_assert(__builtin_offsetof(%s %s, %s) == %d, \"%s %s: %s is not at %d\");"
                                    % (kw, cname, name, off, kw, cname, name, off))
        if kw == "struct" and size > cursor:
            lines.append("    unsigned char __polus_pad_%d[%d];" % (n, size - cursor))
        if kw == "union":
            lines.append("    unsigned char __polus_size[%d];" % size)
        packed = "packed, " if kw == "struct" else ""
        self.out.append("%s %s {\n%s\n} __attribute__((%saligned(%d)));" % (kw, cname, "\n".join(lines), packed,
                                                                           max(align, 1)))
        self.asserts.append("_Static_assert(sizeof(%s %s) == %d, \"%s %s must be %d bytes, as in the target\");"
                            % (kw, cname, size, kw, cname, size))

    def alignment(self, die, depth=0):
        die = strip_qualifiers(die)
        if die is None or depth > 10:
            return 1
        if die.tag == "DW_TAG_base_type":
            return min(attr(die, "DW_AT_byte_size", 1), 16)
        if die.tag in ("DW_TAG_pointer_type",):
            return 8
        if die.tag == "DW_TAG_enumeration_type":
            return attr(die, "DW_AT_byte_size", 4)
        if die.tag == "DW_TAG_array_type":
            return self.alignment(type_of(die), depth + 1)
        if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            if attr(die, "DW_AT_alignment"):
                return attr(die, "DW_AT_alignment")
            a = 1
            size = attr(die, "DW_AT_byte_size", 0)
            for m in die.iter_children():
                if m.tag == "DW_TAG_member":
                    ma = self.alignment(type_of(m), depth + 1)
                    if dwarf.member_bits(m) is None and dwarf.member_offset(m) % ma:
                        return 1  # a packed struct
                    a = max(a, ma)
            return a if size % a == 0 else 1
        return 1

    def text(self):
        self.flush_pending()
        return "\n".join(self.forward + [""] + self.out + [""] + self.asserts) + "\n"
