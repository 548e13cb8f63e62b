"""Cutting the patch's code out of a translation unit compiled to assembly, and rewriting how it
reaches the running target.

The unit is compiled again (the project's own command, plus -S -fPIC -ffixed-r11 -g0) and split
into segments, one per section switch (with -ffunction-sections -fdata-sections, one per function
or object). The patch keeps the segments of the functions and data it carries, and whatever they
need that only the compiler knows about (string and constant pools, jump tables, clones and cold
parts). Every other symbol the kept code refers to lives in the running target: each reference
is rewritten to go through an import slot the injector fills before any patch code runs:

  call foo / jmp foo / jcc foo     -> a stub: jmp *slot(%rip)
  foo@GOTPCREL(%rip)               -> slot(%rip)                 (the GOT entry and the slot agree)
  leaq foo+8(%rip), %reg           -> movq slot(%rip), %reg ; leaq 8(%reg), %reg
  OP ..., foo+8(%rip), ...         -> movq slot(%rip), %r11 ; OP ..., 8(%r11), ...
  .quad foo+8 (in data)            -> .quad 0, set by the patch's pre-update callback (a fixup)

%r11 is free for that because the unit is compiled with -ffixed-r11 (gcc never allocates it), so
no instruction is moved, no stack slot or flag is touched and the CFI stays exact.
"""
import re

from .common import Refused, c_ident, is_generated_name

SECTION_SWITCH = re.compile(r"^\s*\.(text|data|bss|section|pushsection|popsection|previous)\b(.*)$")
LABEL = re.compile(r"^([A-Za-z_.$][\w.$]*):(.*)$")
BINDING = re.compile(r"^\s*\.(globl|global|weak|hidden|protected|local|internal)\s+([A-Za-z_.$][\w.$]*)\s*$")
TYPE_SIZE = re.compile(r"^\s*\.(type|size)\s+([A-Za-z_.$][\w.$]*)\s*,(.*)$")
COMM = re.compile(r"^\s*\.(comm|lcomm)\s+([A-Za-z_.$][\w.$]*)\s*,(.*)$")
SET = re.compile(r"^\s*\.(set|equ)\s+([A-Za-z_.$][\w.$]*)\s*,(.*)$")
IDENT = re.compile(r"(?<![%\w.$@])([A-Za-z_.$][\w.$]*)(@[A-Za-z]+)?")
DATA_DIRECTIVES = {".quad", ".8byte", ".dc.a", ".long", ".4byte", ".int", ".value", ".2byte", ".short", ".word",
                   ".byte", ".uleb128", ".sleb128", ".zero", ".skip", ".string", ".ascii", ".asciz", ".base64"}
TLS_SUFFIXES = {"@tlsgd", "@tlsld", "@dtpoff", "@tpoff", "@gottpoff", "@dtpmod", "@gotntpoff", "@TLSDESC",
                "@tlsdesc", "@TLSCALL", "@tlscall"}
PREFIXES = {"lock", "rep", "repe", "repz", "repne", "repnz", "data16", "rex64", "notrack", "bnd", "addr32"}
NOT_SYMBOLS = {"function", "object", "progbits", "nobits", "tls_object", "gnu_unique_object", "notype"}


class Segment:
    def __init__(self, section, directive):
        self.section, self.directive = section, directive
        self.lines = []
        self.defines = set()   # named symbols defined here
        self.labels = set()    # .L labels defined here
        self.keep = False


def _section_name(kind, rest):
    if kind in ("text", "data", "bss"):
        return "." + kind
    m = re.match(r"\s*([^\s,]+)", rest)
    return m.group(1).strip('"') if m else "?"


def parse(text):
    """Splits gcc's assembly into segments (section switches), keeping order."""
    head, segments, stack = [], [], []
    current = None
    for line in text.splitlines():
        m = SECTION_SWITCH.match(line)
        if m:
            kind, rest = m.group(1), m.group(2)
            if kind == "pushsection":
                stack.append(current.section if current else ".text")
                current = Segment(_section_name("section", rest), "\t.section\t" + rest.strip())
            elif kind in ("popsection", "previous"):
                name = stack.pop() if (kind == "popsection" and stack) else ".text"
                prev = next((s for s in reversed(segments) if s.section == name), None)
                current = Segment(name, prev.directive if prev else "\t.text")
            else:
                current = Segment(_section_name(kind, rest), line)
            segments.append(current)
            continue
        if current is None:
            head.append(line)
            continue
        current.lines.append(line)
        lm = LABEL.match(line)
        if lm:
            name = lm.group(1)
            (current.labels if name.startswith(".L") else current.defines).add(name)
        cm = COMM.match(line) or SET.match(line)
        if cm:
            current.defines.add(cm.group(2))
    return head, segments


def split_operands(text):
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


# gcc writes an offset before or after the symbol: sym+8(%rip), 32+sym(%rip).
MEMORY = re.compile(r"^(?P<star>\*?)(?:(?P<pre>-?\d+)\+)?(?P<sym>[A-Za-z_.$][\w.$]*)(?P<suffix>@[A-Za-z]+)?(?P<off>[+-]\d+)?"
                    r"\(%rip\)$")
DIRECT = re.compile(r"^(?P<sym>[A-Za-z_.$][\w.$]*)(?P<suffix>@PLT)?$")
DATA_EXPR = re.compile(r"^(?P<sym>[A-Za-z_.$][\w.$]*)(?P<off>[+-]\d+)?$")


class TargetRefs:
    """Import slots and stubs shared by all units of one patch."""

    def __init__(self):
        self.imports = {}   # target spec -> index
        self.order = []     # specs by index
        self.stubs = set()  # indices that need a call stub
        self.kinds = {}     # spec -> 'function' | 'data'

    def slot(self, spec, kind):
        if spec not in self.imports:
            self.imports[spec] = len(self.order)
            self.order.append(spec)
        self.kinds.setdefault(spec, kind)
        return "__polus_imp_%d_%s" % (self.imports[spec], c_ident(spec.split(":")[-1])[:40])

    def stub(self, spec, kind):
        slot = self.slot(spec, kind)
        self.stubs.add(self.imports[spec])
        return slot.replace("__polus_imp_", "__polus_stub_", 1)


class UnitPlan:
    """What to do with each symbol of one unit's assembly.

    resolve(name) -> ('keep', new name) | ('import', target spec, kind) | ('extern', name)
    """

    def __init__(self, tu_id, roots, resolve, is_function):
        self.tu_id, self.roots, self.resolve, self.is_function = tu_id, roots, resolve, is_function


def rewrite(text, plan, refs, findings):
    """Returns the patch's assembly for one unit and the number of fixups it has."""
    head, segments = parse(text)
    where = {}
    for i, seg in enumerate(segments):
        for name in seg.defines | seg.labels:
            where.setdefault(name, i)
    bindings = {}  # symbol -> binding directive seen (globl/weak)
    for seg in segments:
        for line in seg.lines:
            m = BINDING.match(line)
            if m and m.group(1) in ("globl", "global", "weak"):
                bindings[m.group(2)] = "weak" if m.group(1) == "weak" else "globl"
    # Reachability: root segments, then what their lines refer to.
    todo = []
    for name in plan.roots:
        if name not in where:
            raise Refused("the recompiled %s has no definition of %s (was it inlined everywhere or renamed by "
                          "the compiler?)" % (plan.tu_id, name))
        todo.append(where[name])
    for i, seg in enumerate(segments):
        if seg.section == ".note.GNU-stack":
            seg.keep = True
    while todo:
        i = todo.pop()
        seg = segments[i]
        if seg.keep:
            continue
        seg.keep = True
        for line in seg.lines:
            if BINDING.match(line) or TYPE_SIZE.match(line):
                continue
            for m in IDENT.finditer(_code_part(line)):
                name = m.group(1)
                if name in NOT_SYMBOLS or name not in where or segments[where[name]].keep:
                    continue
                if name.startswith(".L"):
                    todo.append(where[name])
                else:
                    action = plan.resolve(name)
                    if action[0] == "keep":
                        todo.append(where[name])
    out = list(head)
    fixups = []
    plan.kept_defs = set()
    for seg in segments:
        if seg.keep:
            plan.kept_defs |= seg.defines
    for seg in segments:
        if not seg.keep:
            continue
        if seg.section.startswith((".init_array", ".fini_array", ".ctors", ".dtors")):
            findings.warn("constructor", "%s has a constructor or destructor in the code the patch carries; the "
                                         "patch does not run it (it would run before the import slots are set)"
                          % plan.tu_id)
            continue
        directive = seg.directive
        needs_write = any(_has_data_import(line, plan) for line in seg.lines)
        if needs_write and seg.section.startswith(".data.rel.ro"):
            directive = directive.replace(".data.rel.ro", ".data.rel.polus", 1)
        out.append(directive)
        for line in seg.lines:
            out.extend(_rewrite_line(line, plan, refs, fixups, bindings, findings))
    if fixups:
        out.append("\t.section\t.data.rel.ro.polus_fixups,\"aw\"")
        out.append("\t.p2align 3")
        table = "__polus_fixups_%s" % c_ident(plan.tu_id)
        out.append("\t.globl\t%s\n\t.hidden\t%s\n%s:" % (table, table, table))
        for label, slot, off in fixups:
            out.append("\t.quad\t%s, %s, %d" % (label, slot, off))
        out.append("\t.quad\t0, 0, 0")
    return "\n".join(out) + "\n", len(fixups)


def _code_part(line):
    # gcc puts no comments on instruction lines; '#' starts one (e.g. "# 0 \"\" 2" around inline asm)
    return line.split("#", 1)[0] if not line.lstrip().startswith(".string") and ".ascii" not in line else ""


def _has_data_import(line, plan):
    parts = line.split(None, 1)
    if not parts or parts[0] not in DATA_DIRECTIVES:
        return False
    for m in IDENT.finditer(parts[1] if len(parts) > 1 else ""):
        if not m.group(1).startswith(".L") and plan.resolve(m.group(1))[0] == "import":
            return True
    return False


def _rename_tokens(text, plan, refs, findings, line):
    """Renames kept symbols in a directive or label line; refuses an import there."""
    def sub(m):
        name, suffix = m.group(1), m.group(2) or ""
        if name.startswith(".L") or name in NOT_SYMBOLS:
            return m.group(0)
        action = plan.resolve(name)
        if action[0] == "keep":
            return action[1] + suffix
        return m.group(0)
    return IDENT.sub(sub, text)


def _rewrite_line(line, plan, refs, fixups, bindings, findings):
    stripped = line.strip()
    if not stripped:
        return [line]
    m = BINDING.match(line)
    if m:
        return []  # re-emitted at the label of each kept symbol
    lm = LABEL.match(stripped)
    if lm and not stripped.startswith(".L"):
        name = lm.group(1)
        action = plan.define(name)
        new = action[1] if action[0] == "keep" else name + "__polus_unused"
        lines = []
        if action[0] == "keep" and not is_generated_name(name) and new != name:
            # Exported (protected: it binds within the patch) so later patches can name it; a
            # file-static one is hidden, linkable from patch.c's descriptor only.
            lines.append("\t.%s\t%s" % ("weak" if bindings.get(name) == "weak" else "globl", new))
            lines.append("\t.%s\t%s" % ("protected" if bindings.get(name) else "hidden", new))
        lines.append(new + ":" + lm.group(2))
        return lines
    if lm:
        return [line]
    ts = TYPE_SIZE.match(line)
    if ts:
        action = plan.define(ts.group(2))
        if action[0] != "keep":
            if ts.group(2) not in plan.kept_defs:
                return []
            new = ts.group(2) + "__polus_unused"
        else:
            new = action[1]
        rest = ts.group(3)
        if ts.group(1) == "size":  # ".size foo, .-foo"
            rest = re.sub(r"(?<![\w.$])%s(?![\w.$])" % re.escape(ts.group(2)), new, rest)
        return ["\t.%s\t%s,%s" % (ts.group(1), new, rest)]
    if stripped.startswith("."):
        parts = stripped.split(None, 1)
        if parts[0] in DATA_DIRECTIVES:
            return _rewrite_data(line, parts, plan, refs, fixups)
        if parts[0] in (".set", ".equ", ".symver", ".weakref", ".comm", ".lcomm"):
            if any(plan.resolve(x.group(1))[0] == "import" for x in IDENT.finditer(parts[1])
                   if not x.group(1).startswith(".L")):
                raise Refused("%s: cannot carry '%s' (an alias of a target symbol)" % (plan.tu_id, stripped))
            return [_rename_tokens(line, plan, refs, findings, line)]
        return [line]
    return _rewrite_instruction(line, stripped, plan, refs, findings)


def _rewrite_data(line, parts, plan, refs, fixups):
    directive = parts[0]
    if len(parts) < 2 or directive in (".string", ".ascii", ".asciz", ".base64", ".zero", ".skip"):
        return [line]
    values = split_operands(parts[1])
    out_values, pre = [], []
    for v in values:
        idents = [m for m in IDENT.finditer(v) if not m.group(1).startswith(".L")]
        if not idents:
            out_values.append(v)
            continue
        actions = [plan.resolve(m.group(1)) for m in idents]
        if all(a[0] != "import" for a in actions):
            out_values.append(IDENT.sub(lambda m: (plan.resolve(m.group(1))[1] + (m.group(2) or ""))
                                        if not m.group(1).startswith(".L") and plan.resolve(m.group(1))[0] == "keep"
                                        else m.group(0), v))
            continue
        dm = DATA_EXPR.match(v.replace(" ", ""))
        if directive not in (".quad", ".8byte", ".dc.a") or not dm:
            raise Refused("%s: cannot carry '%s': it refers to a symbol of the running target in a form other "
                          "than an absolute address" % (plan.tu_id, line.strip()))
        action = plan.resolve(dm.group("sym"))
        slot = refs.slot(action[1], action[2])
        label = ".Lpolus_fix_%s_%d" % (c_ident(plan.tu_id), len(fixups))
        fixups.append((label, slot, int(dm.group("off") or 0)))
        # Each value gets its own directive so the label marks exactly its 8 bytes.
        if out_values:
            pre.append("\t%s\t%s" % (directive, ", ".join(out_values)))
            out_values = []
        pre.append(label + ":")
        pre.append("\t%s\t0" % directive)
    if out_values:
        pre.append("\t%s\t%s" % (directive, ", ".join(out_values)))
    return pre


def _rewrite_instruction(line, stripped, plan, refs, findings):
    fields = stripped.split("\t", 1)
    mnemonic_field = fields[0]
    operands = fields[1] if len(fields) > 1 else ""
    words = mnemonic_field.split()
    mnemonic = words[-1] if words else ""
    if not operands:
        # "rep stosq" etc.: nothing to rewrite; a symbol in the mnemonic field would be odd
        return [line]
    ops = split_operands(operands)
    if not any(m.group(1) for op in ops for m in IDENT.finditer(op) if not m.group(1).startswith(".L")):
        return [line]
    is_branch = mnemonic in ("call", "callq", "jmp", "jmpq") or (mnemonic.startswith("j") and len(mnemonic) <= 5)
    pre, new_ops = [], []
    for op in ops:
        idents = [m for m in IDENT.finditer(op) if not m.group(1).startswith(".L")]
        if not idents:
            new_ops.append(op)
            continue
        if len(idents) > 1:
            raise Refused("%s: cannot rewrite '%s' (several symbols in one operand)" % (plan.tu_id, stripped))
        name, suffix = idents[0].group(1), idents[0].group(2) or ""
        action = plan.resolve(name)
        if suffix in TLS_SUFFIXES and action[0] == "import":
            raise Refused("%s: the new code uses the thread-local variable %s of the running target ('%s'). Each "
                          "thread's copy lives in that thread's TLS block, which a patch cannot reach by symbol; "
                          "Polus imports addresses, not thread-pointer offsets. Keep thread-local state out of the "
                          "fix, or pass it in from code that is not replaced" % (plan.tu_id, name, stripped))
        if action[0] == "keep":
            new_ops.append(op[:idents[0].start(1)] + action[1] + op[idents[0].end(1):])
            continue
        if action[0] == "extern":
            new_ops.append(op)
            continue
        spec, kind = action[1], action[2]
        if op.startswith("$"):
            raise Refused("%s: '%s' uses the address of %s as an immediate (code built without -fPIC?)"
                          % (plan.tu_id, stripped, name))
        dm = DIRECT.match(op)
        if is_branch and dm:
            new_ops.append(refs.stub(spec, kind))
            continue
        mm = MEMORY.match(op)
        if not mm:
            raise Refused("%s: cannot rewrite '%s' to reach %s in the running target" % (plan.tu_id, stripped, name))
        slot = refs.slot(spec, kind)
        off = int(mm.group("off") or 0) + int(mm.group("pre") or 0)
        if mm.group("suffix") == "@GOTPCREL":
            if off:
                raise Refused("%s: cannot rewrite '%s' (an offset on a GOT reference)" % (plan.tu_id, stripped))
            new_ops.append(mm.group("star") + slot + "(%rip)")
            continue
        if mm.group("suffix"):
            raise Refused("%s: cannot rewrite '%s' (relocation %s)" % (plan.tu_id, stripped, mm.group("suffix")))
        if mnemonic in ("leaq", "lea") and len(ops) == 2 and op is ops[0]:
            dst = ops[1]
            out = ["\tmovq\t%s(%%rip), %s" % (slot, dst)]
            if off:
                out.append("\tleaq\t%d(%s), %s" % (off, dst, dst))
            return out
        if "%r11" in stripped:
            raise Refused("%s: '%s' uses %%r11, which the rewrite needs (inline assembly?)" % (plan.tu_id, stripped))
        pre.append("\tmovq\t%s(%%rip), %%r11" % slot)
        new_ops.append(mm.group("star") + ("%d" % off if off else "") + "(%r11)")
    return pre + ["\t%s\t%s" % (mnemonic_field, ", ".join(new_ops))]
