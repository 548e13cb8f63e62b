"""The closure of what the patch must replace: users of changed data, callers of functions whose
signature changed, and functions that call a changed compiler-made clone or part of themselves."""
from .common import Refused, is_generated_name
from .objects import ObjectFile


def _load(tu, build_old, build_new):
    if tu.old is None and tu.old_rec:
        tu.old = ObjectFile(build_old.path(tu.obj))
    if tu.new is None and tu.new_rec:
        tu.new = ObjectFile(build_new.path(tu.obj))


def named_users(obj, name):
    """Named functions of `obj` that refer to `name`, directly or through compiler-made clones."""
    users, seen, todo = set(), set(), [name]
    while todo:
        target = todo.pop()
        for fname, fn in obj.functions.items():
            if target in fn.refs and fname not in seen:
                seen.add(fname)
                if is_generated_name(fname):
                    todo.append(fname)
                else:
                    users.add(fname)
    return users


def all_users(obj, name):
    """Every function of `obj` (clones included) that refers to `name`."""
    return {f for f, fn in obj.functions.items() if name in fn.refs}


def _units_using(a, tu, name, build_old, build_new, new=True):
    """TUs whose object refers to `name` of unit `tu` (itself, and others if it is global)."""
    obj = tu.new if new else tu.old
    ent = obj and (obj.functions.get(name) or obj.data.get(name))
    result = [tu]
    if ent is not None and ent.symbol.is_global:
        for other in a.tus.values():
            if other is tu:
                continue
            rec_obj = other.new_rec if new else other.old_rec
            if rec_obj is None:
                continue
            _load(other, build_old, build_new)
            o = other.new if new else other.old
            if o is not None and name in o.undefined:
                result.append(other)
    return result


def close_over(a, build_old, build_new, findings):
    contributing = {tu.obj for tu in a.changed_tus}
    # Users of changed data, in both versions: the new ones are replaced, both go to F2D/D2F.
    for (obj, name), change in a.data_changes.items():
        tu = a.tus[obj]
        for other in _units_using(a, tu, name, build_old, build_new, new=True):
            if other.new is None:
                continue
            for f in all_users(other.new, name):
                a.kept.setdefault((other.obj, f), "uses %s" % change.key)
            change.new_users |= {(other.obj, f) for f in named_users(other.new, name)}
            contributing.add(other.obj)
        if tu.old is not None:
            for other in _units_using(a, tu, name, build_old, build_new, new=False):
                if other.old is not None:
                    change.old_users |= {(other.obj, f) for f in named_users(other.old, name)}
    _refuse_data_main_uses(a)
    # A function whose signature changed because a changed type is in it (foo(struct A *) when
    # struct A changed) may write changed data through its parameters: it uses that data.
    for (obj, name) in sorted(a.sig_changed):
        tu = a.tus[obj]
        old_sig = _old_signature(a, tu, name)
        for change in a.data_changes.values():
            if any(s in old_sig for s in _struct_names(change)):
                if tu.old is not None and name in tu.old.functions:
                    change.old_users.add((obj, name))
                change.new_users.add((obj, name))
    # Callers of functions whose signature changed call the new function: they are replaced.
    for (obj, name) in sorted(a.sig_changed):
        tu = a.tus[obj]
        for other in _units_using(a, tu, name, build_old, build_new, new=True):
            if other.new is None:
                continue
            for f in all_users(other.new, name):
                if (other.obj, f) not in a.kept and (other.old is None or f in other.old.functions):
                    a.kept[(other.obj, f)] = "calls %s, whose signature changed" % tu.key(name)
            contributing.add(other.obj)
    # A changed clone or part (foo.isra.0, foo.cold) changes every function that refers to it.
    changed = True
    while changed:
        changed = False
        for obj in list(contributing):
            tu = a.tus[obj]
            if tu.new is None:
                continue
            for fname, fn in tu.new.functions.items():
                if (obj, fname) in a.kept:
                    continue
                for ref in fn.refs:
                    if is_generated_name(ref) and ref in tu.new.functions and (obj, ref) in a.kept:
                        a.kept[(obj, fname)] = "refers to %s, which changed" % ref
                        changed = True
                        break
    a.contributing = [a.tus[o] for o in sorted(contributing)
                      if any(k[0] == o for k in a.kept) or any(k[0] == o for k in a.data_changes)
                      or any(k[0] == o for k in a.new_data) or any(k[0] == o for k in a.const_changed)]
    for (obj, name), why in sorted(a.kept.items()):
        if name == "main" and why != "added":
            findings.warn("main-changed", "main() changed (%s): the running main() will not run the new code; "
                                          "only a new call would" % a.tus[obj].source)


def _refuse_data_main_uses(a):
    """A global whose layout changed and that main() uses cannot be converted: main never
    returns, so its activation keeps the old copy in use and the update would stay syncing for
    good (each access of old or new code a fault, for the life of the process)."""
    for (obj, name), change in sorted(a.data_changes.items()):
        if change.kind != "layout" or not any(f == "main" for _, f in change.old_users):
            continue
        tu = a.tus[obj]
        old = tu.old.data.get(name) if tu.old else None
        new = tu.new.data.get(name) if tu.new else None
        sizes = ""
        if old and new:
            sizes = " (%d bytes, now %d)" % (old.size, new.size) if old.size != new.size else \
                " (members moved; %d bytes still)" % old.size
        users = len({f for _, f in change.old_users | change.new_users})
        raise Refused("the fix changes the layout of %s%s, which main() uses: main never returns, so the running "
                      "main would keep the old copy in use and the data update would never end (old and new copies "
                      "synced on every access, for the life of the process); %d functions use it. Keep the layout: "
                      "put what the fix adds in a new global of its own (a shadow variable) and write the fix "
                      "against that" % (change.key, sizes, users))


def _old_signature(a, tu, name):
    import os
    from . import dwarf
    cu = os.path.join(a.src_root, tu.source)
    return dwarf.function_signature(a.dwarf_for(cu, new=False).functions.get((cu, name))) or ""


def _struct_names(change):
    """Markers of the struct and union types a changed global's old type contains."""
    import re
    from . import dwarf
    if change.old_var is None:
        return []
    text = dwarf.signature(change.old_var.type, True)
    return {m.group(0) for m in re.finditer(r"(structure|union)_type [A-Za-z_]\w*\{", text)}
