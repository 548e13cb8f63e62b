"""The text report written beside the patch (report.txt)."""
import os

from .common import is_generated_name


class Report:
    def __init__(self, out, findings):
        self.out, self.f = out, findings
        self.lines_head = []
        self.outcome = []
        self.analysis = None
        self.plan = None

    def context(self, args, binary, build_id, number, target):
        self.lines_head = [
            "old tree:     %s" % os.path.abspath(args.old),
            "fix:          %s" % os.path.abspath(args.fix or args.new),
            "build:        %s" % args.build,
            "binary:       %s" % binary,
            "bound to:     %s (build-id %s)" % (target, build_id),
            "patch number: %d (new names end in _v%d)" % (number, number),
        ]

    def refused(self, why):
        self.outcome = ["RESULT: refused. No patch was made.", "", why]

    def failed(self, why):
        self.outcome = ["RESULT: failed.", "", why]

    def incomplete(self):
        self.outcome = ["RESULT: incomplete. patch.c was generated but does not build until its author fills in "
                        "the placeholders below (write them in a file, see author-skeleton.c if present, and run "
                        "again with --author FILE)."]

    def built(self, so, force=None):
        self.outcome = ["RESULT: built %s" % so, "apply it:  polusctl apply PID %s%s" % (so, " --force" if force else ""),
                        "undo it:   polusctl rollback PID"]
        if force:
            self.outcome.append("(--force: gcc's copies of replaced functions are called only by replaced functions: "
                                "see Notes)")

    def write(self):
        lines = ["polus-mkpatch report", "=" * 20, ""] + self.lines_head + [""] + self.outcome + [""]
        a, p = self.analysis, self.plan
        if p is not None:
            lines.append("Functions")
            for (obj, name), (spec, new) in sorted(p.replaced.items()):
                lines.append("  replaced  %-32s -> %-24s (%s)" % (spec, new, a.kept[(obj, name)]))
            for (obj, name), new in sorted(p.added_fns.items()):
                what = "signature changed" if (obj, name) in a.sig_changed else a.kept[(obj, name)]
                lines.append("  added     %-32s    %-24s (%s)" % (a.tus[obj].key(name), new, what))
            carried = sorted(n for (o, n) in a.kept if is_generated_name(n))
            if carried:
                lines.append("  carried compiler-made parts: %s" % ", ".join(carried))
            if a.line_only:
                lines.append("  unchanged but for line numbers (__LINE__ the fix shifted; not replaced): %s" %
                             ", ".join(sorted(a.tus[o].key(n, False) for o, n in a.line_only)))
            for (obj, name) in a.removed:
                lines.append("  removed   %s (left in the target, unused by new code)" % a.tus[obj].key(name, False))
            lines.append("")
            if a.data_changes or a.new_data or a.const_changed or a.removed_data:
                lines.append("Data")
            for (obj, name), ch in sorted(a.data_changes.items()):
                what = {"layout": "type changed: old/new pair, sync functions both ways",
                        "heap": "points to a changed type: heap root, pre-update callback",
                        "tls": "thread-local, type changed"}[ch.kind]
                lines.append("  %-34s -> %-20s %s" % (ch.key, p.kept_data.get((obj, name), "?"), what))
                lines.append("      used by old %s; new %s" % (
                    ", ".join(sorted(n for _, n in ch.old_users)) or "-",
                    ", ".join(sorted(n for _, n in ch.new_users)) or "-"))
            for (obj, name) in sorted(a.new_data):
                lines.append("  new       %s -> %s" % (a.tus[obj].key(name), p.kept_data.get((obj, name), name)))
            for (obj, name) in sorted(a.const_changed):
                lines.append("  constant  %s changed: the patch carries the new one" % a.tus[obj].key(name))
            for (obj, name) in a.removed_data:
                lines.append("  removed   %s (left in the target)" % a.tus[obj].key(name, False))
            lines.append("")
            if p.refs.order:
                lines.append("Imports (target symbols the carried code reaches through slots)")
                lines.append("  " + ", ".join(p.refs.order))
                lines.append("")
        for title, items in (("Placeholders (the patch does not build until they are written)", self.f.placeholders),
                             ("Warnings", self.f.warnings)):
            if items:
                lines.append(title)
                for code, msg in items:
                    lines.append("  [%s] %s" % (code, msg))
                lines.append("")
        if self.f.unverified:
            lines.append("Not verified")
            lines.extend("  - " + m for m in self.f.unverified)
            lines.append("")
        if self.f.notes:
            lines.append("Notes")
            lines.extend("  - " + m for m in self.f.notes)
            lines.append("")
        with open(os.path.join(self.out, "report.txt"), "w") as f:
            f.write("\n".join(lines))
        for code, msg in self.f.warnings:
            print("warning [%s]: %s" % (code, msg))
        print("\n".join(self.outcome[:2]))
