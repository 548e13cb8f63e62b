"""Sync code: copying an object of the old type into one of the new type, and back.

Members are matched by name and copied when their types are compatible: the same layout (copied
as bytes), integers or floating-point values of any width (converted as C converts, a narrowing
reported), pointers to unchanged types, structs and arrays recursively. A member only one side
has is left alone (new fields keep their initial value). A pointer to a changed type is not
copied: it leads to heap data, which the author converts. Anything else becomes a placeholder,
an #error that names it, so the patch does not build until the author writes that copy.
"""
from . import dwarf
from .dwarf import attr, type_of, strip_qualifiers

SCALARS = ("DW_TAG_base_type", "DW_TAG_enumeration_type", "DW_TAG_pointer_type")


def _kind(die):
    if die is None:
        return "void"
    if die.tag == "DW_TAG_base_type":
        enc = attr(die, "DW_AT_encoding")
        return "float" if enc in (4,) else ("complex" if enc == 3 else "int")
    if die.tag == "DW_TAG_enumeration_type":
        return "int"
    return die.tag


class CopyWriter:
    """Writes the body of a copy from `src` (one side's type) to `dst` (the other's)."""

    def __init__(self, types, findings, what):
        self.types, self.findings, self.what = types, findings, what
        self.lines = []
        self.placeholders = []
        self.heap_links = []
        self.loop = 0

    def copy(self, dst, dst_die, src, src_die, path, dst_new, indent="    ", dst_base=None, src_base=None):
        d, s = strip_qualifiers(dst_die), strip_qualifiers(src_die)
        if d is None or s is None:
            return
        same_layout = dwarf.signature(d, False) == dwarf.signature(s, False)
        same_deep = same_layout and dwarf.signature(d, True) == dwarf.signature(s, True)
        if same_deep:
            if d.tag in SCALARS:
                self.lines.append("%s%s = %s; /* %s */" % (indent, dst, src, path))
            else:
                self.lines.append("%s__builtin_memcpy(&%s, &%s, sizeof %s); /* %s */" % (indent, dst, src, dst, path))
            return
        kd, ks = _kind(d), _kind(s)
        if kd in ("int", "float") and ks in ("int", "float"):
            ds, ss = dwarf.byte_size(d), dwarf.byte_size(s)
            if ds < ss or kd != ks:
                self.findings.warn("narrowed", "%s: %s changes from %s to %s; copied with C's conversion, which can "
                                               "lose values" % (self.what, path, dwarf.tag_name(s), dwarf.tag_name(d)))
            self.lines.append("%s%s = %s; /* %s */" % (indent, dst, src, path))
            return
        if kd == "DW_TAG_pointer_type" and ks == "DW_TAG_pointer_type":
            if dwarf.signature(type_of(d), True) == dwarf.signature(type_of(s), True):
                self.lines.append("%s%s = (%s)%s; /* %s */" % (indent, dst, self.types.declare(d, "", dst_new), src,
                                                               path))
            else:
                self.heap_links.append(path)
                self.lines.append("%s/* %s: a pointer to a changed type (%s -> %s) is not copied: it leads to heap "
                                  "data, converted by the pre-update callback */" % (indent, path, dwarf.tag_name(s),
                                                                                     dwarf.tag_name(d)))
            return
        if d.tag == s.tag == "DW_TAG_structure_type":
            self._struct(dst, d, src, s, path, dst_new, indent)
            return
        if d.tag == s.tag == "DW_TAG_array_type":
            dd, sd = dwarf.array_dims(d), dwarf.array_dims(s)
            if len(dd) == len(sd) == 1 and dd[0] and sd[0]:
                n = min(dd[0], sd[0])
                if dd[0] != sd[0]:
                    self.findings.warn("array-resized", "%s: %s changes length %d -> %d; the first %d elements are "
                                                        "copied" % (self.what, path, sd[0], dd[0], n))
                i = "i%d" % self.loop
                self.loop += 1
                self.lines.append("%sfor (unsigned long %s = 0; %s < %d; %s++) {" % (indent, i, i, n, i))
                self.copy("%s[%s]" % (dst, i), type_of(d), "%s[%s]" % (src, i), type_of(s), path + "[]", dst_new,
                          indent + "    ")
                self.lines.append(indent + "}")
                return
        self.placeholder(path, "%s -> %s" % (dwarf.tag_name(s), dwarf.tag_name(d)), indent)

    def placeholder(self, path, why, indent):
        msg = "%s: cannot copy %s (%s)" % (self.what, path, why)
        self.placeholders.append(msg)
        self.lines.append('#error "polus-mkpatch: %s; write this sync function in an author file (--author)"'
                          % msg.replace('"', "'"))

    def _struct(self, dst, d, src, s, path, dst_new, indent):
        dm = {attr(m, "DW_AT_name"): m for m in d.iter_children() if m.tag == "DW_TAG_member" and attr(m, "DW_AT_name")}
        sm = {attr(m, "DW_AT_name"): m for m in s.iter_children() if m.tag == "DW_TAG_member" and attr(m, "DW_AT_name")}
        if any(m.tag == "DW_TAG_member" and not attr(m, "DW_AT_name") for m in list(d.iter_children()) +
               list(s.iter_children())):
            if dwarf.signature(d, False) != dwarf.signature(s, False):
                self.placeholder(path, "an anonymous struct or union member", indent)
                return
        for name, m in dm.items():
            o = sm.get(name)
            sub = "%s.%s" % (path, name)
            if o is None:
                if dst_new:
                    self.findings.note("%s: %s is new: not copied (keeps its initial value)" % (self.what, sub))
                continue
            bd, bs = dwarf.member_bits(m), dwarf.member_bits(o)
            if bd or bs:
                if bd and bs and bd[0] == bs[0]:
                    self.lines.append("%spolus_copy_bits(&%s, %d, &%s, %d, %d); /* %s */" % (
                        indent, dst, bd[1], src, bs[1], bd[0], sub))
                elif bd and bs:
                    self.placeholder(sub, "bit-field width %d -> %d" % (bs[0], bd[0]), indent)
                else:
                    self.placeholder(sub, "bit-field <-> plain member", indent)
                continue
            self.copy("%s.%s" % (dst, name), type_of(m), "%s.%s" % (src, name), type_of(o), sub, dst_new, indent)
        for name in sm:
            if name not in dm and dst_new:
                self.findings.note("%s: %s.%s was removed: not copied" % (self.what, path, name))


BITS_HELPER = """\
/* Copies `bits` bits from bit `src_bit` of the object at `src` to bit `dst_bit` of the one at `dst`. */
static inline __attribute__((unused)) void polus_copy_bits(void *dst, unsigned long dst_bit, const void *src,
                                                           unsigned long src_bit, unsigned bits) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    for (unsigned i = 0; i < bits; i++) {
        unsigned long sb = src_bit + i, db = dst_bit + i;
        unsigned v = (s[sb / 8] >> (sb % 8)) & 1u;
        d[db / 8] = (unsigned char)((d[db / 8] & ~(1u << (db % 8))) | (v << (db % 8)));
    }
}
"""
