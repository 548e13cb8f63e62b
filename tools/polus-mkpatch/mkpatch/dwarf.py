"""DWARF of a linked binary: its globals (with the symbol each lives at), functions and types,
and structural signatures of types to compare two builds' types.

A type's *layout* signature describes the bytes an object of that type occupies (members,
offsets, sizes, recursively through nested structs and arrays; a pointer is just a pointer to a
named type). Its *deep* signature also follows pointers into the pointed-to types, so a global
`struct item *inventory` whose `struct item` gained a field keeps its layout but changes deeply:
that is heap data reachable through a pointer.
"""
import os

from elftools.elf.elffile import ELFFile

DW_OP_addr, DW_OP_const8u, DW_OP_GNU_push_tls_address, DW_OP_form_tls_address = 0x03, 0x0e, 0xe0, 0x9b
QUALIFIERS = ("DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type", "DW_TAG_atomic_type")


class Variable:
    """A variable with a static address (global, file-static or function-static)."""
    __slots__ = ("name", "die", "address", "symbol", "external", "tls", "scope", "cu")

    def __init__(self, name, die, address, external, tls, scope, cu):
        self.name, self.die, self.address, self.external, self.tls, self.scope, self.cu = \
            name, die, address, external, tls, scope, cu
        self.symbol = None

    @property
    def type(self):
        return type_of(self.die)


def type_of(die):
    if die is None or "DW_AT_type" not in die.attributes:
        return None
    return die.get_DIE_from_attribute("DW_AT_type")


def attr(die, name, default=None):
    a = die.attributes.get(name)
    if a is None:
        return default
    v = a.value
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def die_name(die):
    """DW_AT_name, following DW_AT_specification / DW_AT_abstract_origin."""
    seen = 0
    while die is not None and seen < 4:
        name = attr(die, "DW_AT_name")
        if name is not None:
            return name
        for link in ("DW_AT_specification", "DW_AT_abstract_origin"):
            if link in die.attributes:
                die = die.get_DIE_from_attribute(link)
                break
        else:
            return None
        seen += 1
    return None


def origin(die):
    """The DIE that carries a function's or variable's declaration (type, parameters)."""
    for _ in range(4):
        for link in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if link in die.attributes:
                die = die.get_DIE_from_attribute(link)
                break
        else:
            return die
    return die


class BinaryDwarf:
    """The DWARF of the compilation units of `binary` whose source is in `sources` (absolute
    paths; None = every unit)."""

    def __init__(self, binary, sources=None):
        self.binary = binary
        self._file = open(binary, "rb")
        self.elf = ELFFile(self._file)
        self.symbols_at = {}  # address -> [(name, is_global, source file)]
        symtab = self.elf.get_section_by_name(".symtab")
        current = ""
        for sym in symtab.iter_symbols() if symtab else []:
            t = sym["st_info"]["type"]
            if t == "STT_FILE":
                current = sym.name
                continue
            if t in ("STT_OBJECT", "STT_FUNC", "STT_TLS") and sym["st_shndx"] != "SHN_UNDEF" and sym.name:
                key = sym["st_value"] if t != "STT_TLS" else ("tls", sym["st_value"])
                self.symbols_at.setdefault(key, []).append(
                    (sym.name, sym["st_info"]["bind"] != "STB_LOCAL", current))
        self.variables = []   # Variable
        self.functions = {}   # (cu source, name) -> DIE with the declaration
        self.cu_sources = set()
        if not self.elf.has_dwarf_info():
            return
        dwarf = self.elf.get_dwarf_info()
        wanted = {os.path.normpath(s) for s in sources} if sources is not None else None
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            name = attr(top, "DW_AT_name") or ""
            comp_dir = attr(top, "DW_AT_comp_dir") or ""
            path = os.path.normpath(os.path.join(comp_dir, name))
            if wanted is not None and path not in wanted:
                continue
            self.cu_sources.add(path)
            self._walk(top, path, None)

    def _walk(self, die, cu, scope):
        for child in die.iter_children():
            tag = child.tag
            if tag == "DW_TAG_subprogram":
                name = die_name(child)
                if name and scope is None:
                    decl = origin(child)
                    prev = self.functions.get((cu, name))
                    if prev is None or (child.has_children and not prev.has_children):
                        self.functions[(cu, name)] = decl if decl.has_children or not child.has_children else child
                if child.has_children:
                    self._walk(child, cu, name or scope)
            elif tag == "DW_TAG_lexical_block":
                self._walk(child, cu, scope)
            elif tag == "DW_TAG_variable" and "DW_AT_location" in child.attributes:
                loc = child.attributes["DW_AT_location"]
                if loc.form != "DW_FORM_exprloc" or not loc.value:
                    continue
                ops = loc.value
                decl = origin(child)
                name = die_name(child)
                external = bool(attr(decl, "DW_AT_external", False))
                if ops[0] == DW_OP_addr and len(ops) == 9:
                    address = int.from_bytes(bytes(ops[1:9]), "little")
                    var = Variable(name, decl, address, external, False, scope, cu)
                elif ops[0] == DW_OP_const8u and len(ops) == 10 and ops[9] in (DW_OP_GNU_push_tls_address,
                                                                               DW_OP_form_tls_address):
                    address = int.from_bytes(bytes(ops[1:9]), "little")
                    var = Variable(name, decl, ("tls", address), external, True, scope, cu)
                else:
                    continue
                var.symbol = self._symbol_for(var)
                self.variables.append(var)

    def _symbol_for(self, var):
        candidates = self.symbols_at.get(var.address, [])
        for name, is_global, _ in candidates:
            if name == var.name or name.startswith(var.name + "."):
                return name
        return candidates[0][0] if candidates else None

    def close(self):
        self._file.close()


# ---- structural signatures ---------------------------------------------------------------

def strip_qualifiers(die):
    while die is not None and die.tag in QUALIFIERS + ("DW_TAG_typedef",):
        die = type_of(die)
    return die


def byte_size(die):
    die = strip_qualifiers(die)
    if die is None:
        return 0
    size = attr(die, "DW_AT_byte_size")
    if size is not None:
        return size
    if die.tag == "DW_TAG_pointer_type":
        return 8
    if die.tag == "DW_TAG_array_type":
        n = 1
        for dim in array_dims(die):
            n *= dim if dim is not None else 0
        return n * byte_size(type_of(die))
    return 0


def array_dims(die):
    dims = []
    for sub in die.iter_children():
        if sub.tag == "DW_TAG_subrange_type":
            if "DW_AT_count" in sub.attributes:
                dims.append(attr(sub, "DW_AT_count"))
            elif "DW_AT_upper_bound" in sub.attributes and isinstance(attr(sub, "DW_AT_upper_bound"), int):
                dims.append(attr(sub, "DW_AT_upper_bound") + 1)
            else:
                dims.append(None)
    return dims


def member_offset(m):
    loc = m.attributes.get("DW_AT_data_member_location")
    if loc is None:
        return 0
    if isinstance(loc.value, int):
        return loc.value
    if isinstance(loc.value, list) and loc.value and loc.value[0] == 0x23:  # DW_OP_plus_uconst
        value, shift = 0, 0
        for b in loc.value[1:]:
            value |= (b & 0x7f) << shift
            shift += 7
            if not b & 0x80:
                break
        return value
    return 0


def member_bits(m):
    """(bit size, bit offset from the struct start) of a bit-field member, or None."""
    size = attr(m, "DW_AT_bit_size")
    if size is None:
        return None
    if "DW_AT_data_bit_offset" in m.attributes:
        return size, attr(m, "DW_AT_data_bit_offset")
    storage = attr(m, "DW_AT_byte_size") or byte_size(type_of(m))
    bit_offset = attr(m, "DW_AT_bit_offset", 0)  # DWARF 2-4: from the storage unit's MSB
    return size, member_offset(m) * 8 + storage * 8 - bit_offset - size


def tag_name(die):
    """A short name for a type: "struct A", "int", "node_t", "enum e" (for messages)."""
    if die is None:
        return "void"
    t = die.tag
    name = attr(die, "DW_AT_name")
    if t == "DW_TAG_structure_type":
        return "struct " + (name or "<anonymous>")
    if t == "DW_TAG_union_type":
        return "union " + (name or "<anonymous>")
    if t == "DW_TAG_enumeration_type":
        return "enum " + (name or "<anonymous>")
    if t == "DW_TAG_pointer_type":
        return tag_name(type_of(die)) + " *"
    if t in QUALIFIERS:
        return {"DW_TAG_const_type": "const ", "DW_TAG_volatile_type": "volatile ",
                "DW_TAG_atomic_type": "_Atomic ", "DW_TAG_restrict_type": ""}[t] + tag_name(type_of(die))
    if t == "DW_TAG_array_type":
        return tag_name(type_of(die)) + "".join("[%s]" % (d if d is not None else "") for d in array_dims(die))
    if t == "DW_TAG_subroutine_type":
        return "function"
    return name or t


_SIGNATURES = {}


def signature(die, deep, _stack=None):
    """Canonical text of a type's layout (deep: through pointers too). Equal text, same layout."""
    stack = _stack if _stack is not None else []
    die = strip_qualifiers(die)
    if die is None:
        return "void"
    # Memoised per DIE (the first text computed is kept: the same walk in both builds gives the
    # same texts, and big programs' deep signatures would otherwise be walked again and again).
    key = (id(die.dwarfinfo), die.offset, deep)
    if key not in _SIGNATURES:
        _SIGNATURES[key] = _signature(die, deep, stack)
    return _SIGNATURES[key]


def _signature(die, deep, stack):
    t = die.tag
    if t == "DW_TAG_base_type":
        return "%s:%d:%s" % (attr(die, "DW_AT_name"), attr(die, "DW_AT_byte_size", 0), attr(die, "DW_AT_encoding"))
    if t == "DW_TAG_pointer_type":
        target = type_of(die)
        if not deep:
            return "ptr(%s)" % tag_name(strip_qualifiers(target)) if target is not None else "ptr(void)"
        return "ptr(%s)" % signature(target, deep, stack)
    if t == "DW_TAG_enumeration_type":
        return "enum:%d" % attr(die, "DW_AT_byte_size", 4)
    if t == "DW_TAG_array_type":
        return "arr%s(%s)" % (array_dims(die), signature(type_of(die), deep, stack))
    if t == "DW_TAG_subroutine_type":
        params = [signature(type_of(p), False, stack) for p in die.iter_children()
                  if p.tag == "DW_TAG_formal_parameter"]
        return "fn(%s)->%s" % (",".join(params), signature(type_of(die), False, stack))
    if t in ("DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_class_type"):
        key = (t, attr(die, "DW_AT_name"))
        if attr(die, "DW_AT_declaration"):
            return "%s %s <incomplete>" % key
        if die.offset in stack or (key[1] and any(k == key for k in stack if isinstance(k, tuple))):
            return "rec(%s %s)" % key
        stack.append(die.offset)
        stack.append(key)
        members = []
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            bits = member_bits(m)
            members.append("%s@%d%s:%s" % (attr(m, "DW_AT_name") or "", member_offset(m),
                                          "/%d.%d" % bits if bits else "", signature(type_of(m), deep, stack)))
        stack.pop()
        stack.pop()
        return "%s %s{%d;%s}" % (key[0][7:], key[1] or "", attr(die, "DW_AT_byte_size", 0), ";".join(members))
    return t


def function_signature(die):
    """Deep signature of a function's return and parameter types (None if no DWARF)."""
    if die is None:
        return None
    params = [signature(type_of(p), True) for p in die.iter_children() if p.tag == "DW_TAG_formal_parameter"]
    variadic = any(p.tag == "DW_TAG_unspecified_parameters" for p in die.iter_children())
    return "(%s%s)->%s" % (",".join(params), ",..." if variadic else "", signature(type_of(die), True))


def contains_function_pointers(die, _depth=0):
    die = strip_qualifiers(die)
    if die is None or _depth > 8:
        return False
    if die.tag == "DW_TAG_pointer_type":
        target = strip_qualifiers(type_of(die))
        return target is not None and target.tag == "DW_TAG_subroutine_type"
    if die.tag == "DW_TAG_array_type":
        return contains_function_pointers(type_of(die), _depth + 1)
    if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
        return any(contains_function_pointers(type_of(m), _depth + 1) for m in die.iter_children()
                   if m.tag == "DW_TAG_member")
    return False
