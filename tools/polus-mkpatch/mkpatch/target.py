"""The running binary the patch is for: its build-id and symbols, and what can be checked
against the rebuilt old binary."""
import os

from elftools.elf.elffile import ELFFile

from .common import Refused


class Binary:
    def __init__(self, path):
        self.path = path
        self.build_id = None
        self.globals = {}   # name -> (size, is_function)
        self.locals = {}    # (file basename, name) -> (size, is_function)
        self.has_symtab = False
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                raise Refused("%s is not an x86-64 binary" % path)
            for sec in elf.iter_sections():
                if sec["sh_type"] == "SHT_NOTE":
                    for note in sec.iter_notes():
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            self.build_id = note["n_desc"]
            for name in (".symtab", ".dynsym"):
                tab = elf.get_section_by_name(name)
                if tab is None:
                    continue
                self.has_symtab = self.has_symtab or name == ".symtab"
                current = ""
                for sym in tab.iter_symbols():
                    t = sym["st_info"]["type"]
                    if t == "STT_FILE":
                        current = os.path.basename(sym.name)
                        continue
                    if t not in ("STT_FUNC", "STT_OBJECT", "STT_TLS", "STT_GNU_IFUNC") or sym["st_shndx"] == "SHN_UNDEF":
                        continue
                    entry = (sym["st_size"], t != "STT_OBJECT" and t != "STT_TLS")
                    base = sym.name.split("@")[0]
                    if sym["st_info"]["bind"] == "STB_LOCAL":
                        self.locals[(current, base)] = entry
                    else:
                        self.globals[base] = entry

    def lookup(self, spec):
        """(size, is_function) of a spec "name" or "file.c:name", or None."""
        if ":" in spec:
            f, n = spec.rsplit(":", 1)
            return self.locals.get((os.path.basename(f), n))
        if spec in self.globals:
            return self.globals[spec]
        found = [v for (f, n), v in self.locals.items() if n == spec]
        return found[0] if len(found) == 1 else None


def compare_builds(rebuilt, running, specs, findings, quiet_identity=False):
    """Says what differs between the rebuilt old binary and the running one, for the names the
    patch uses; and that the code itself cannot be compared when they are different builds."""
    if rebuilt.build_id == running.build_id:
        return
    if not quiet_identity:
        findings.cannot_verify("the running binary %s (build-id %s) is not the rebuilt old version (build-id %s): the "
                           "generator compared the old and new sources as rebuilt with its flags, and cannot verify "
                           "that the running code equals the rebuilt old code (other compiler flags, another "
                           "compiler or source). Names are resolved in the running binary, as polusctl does"
                           % (running.path, running.build_id, rebuilt.build_id))
    if not running.has_symtab:
        findings.cannot_verify("%s has no .symtab: file-static names resolve only with its debug file "
                               "(polusctl --debug-file)" % running.path)
    for spec in sorted(specs):
        a, b = rebuilt.lookup(spec), running.lookup(spec)
        if b is None and running.has_symtab:
            findings.cannot_verify("%s is not in the running binary's symbol table (inlined or removed there?): "
                                   "polusctl will refuse the patch" % spec)
        elif a and b and a[1] and a[0] != b[0] and not quiet_identity:
            findings.cannot_verify("%s is %d bytes in the running binary, %d in the rebuilt one: the running code "
                                   "was built differently (e.g. without -flive-patching=inline-clone, so callers may "
                                   "rely on what gcc learnt about its body)" % (spec, b[0], a[0]))
