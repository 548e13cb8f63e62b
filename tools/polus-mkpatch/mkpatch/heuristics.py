"""Source-level warnings where objects and DWARF cannot tell: pointers to changed data that
pass through void *, and addresses of changed globals stored in other data."""
import os
import re

from . import dwarf


def void_casts(analysis, new_root, findings):
    """Warns about casts between void * and a changed global or type in the changed sources."""
    names, types = set(), set()
    for change in analysis.data_changes.values():
        names.add(change.name)
        for var in (change.old_var, change.new_var):
            if var is not None:
                text = dwarf.signature(var.type, True)
                types |= {m.group(2) for m in re.finditer(r"(structure|union)_type ([A-Za-z_]\w*)\{", text)}
    if not names and not types:
        return
    pats = [re.compile(r"\(\s*void\s*\*\s*\)\s*&?\s*%s\b" % re.escape(n)) for n in names]
    pats += [re.compile(r"\(\s*(const\s+)?(struct|union)\s+%s\s*\*\s*\)" % re.escape(t)) for t in types]
    for tu in analysis.contributing:
        path = os.path.join(new_root, tu.source)
        try:
            with open(path, errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for i, line in enumerate(lines, 1):
            if any(p.search(line) for p in pats):
                findings.warn("void-cast", "%s:%d: %s -- a pointer to changed data converted to or from void *: "
                                           "wherever such a pointer is kept (a callback argument, a generic container), "
                                           "it still points at the old object after the update; check it by hand"
                              % (tu.source, i, line.strip()))


def stored_addresses(analysis, findings):
    """Warns when the old program's data holds the address of a changed global (an interior
    pointer such as `struct A *current = &ab.a;`): it keeps pointing into the old object."""
    for (obj, name), change in analysis.data_changes.items():
        for tu in analysis.tus.values():
            o = tu.old
            if o is None:
                continue
            for dname, d in o.data.items():
                if name in d.refs and dname != name:
                    findings.warn("stored-pointer", "%s holds the address of %s, whose type changed: after the "
                                                    "update it still points into the old object; convert it in a "
                                                    "pre-update callback (--author)" % (tu.key(dname, new=False),
                                                                                        change.key))
