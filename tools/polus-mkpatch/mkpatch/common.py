"""Errors, findings (warnings, refusals) and process helpers shared by the generator's parts."""
import os
import subprocess
import sys


class Refused(Exception):
    """The generator cannot make this patch; the message says why and what to do."""


# Exit statuses (documented in GENERATOR.md).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BUILD = 3        # the old or new tree did not build, or the fix did not apply
EXIT_REFUSED = 4      # the change is outside what the generator handles (reason given)
EXIT_INCOMPLETE = 5   # a patch source was generated but needs the author (placeholders)
EXIT_PATCH_BUILD = 6  # the generated patch did not compile or link


class Findings:
    """What the report lists: warnings (with a code), notes, and placeholders left to fill."""

    def __init__(self):
        self.warnings = []      # (code, message)
        self.notes = []         # plain lines
        self.placeholders = []  # (code, message): each is an #error in the generated source
        self.unverified = []    # what the generator could not check against the running binary

    def warn(self, code, message):
        if (code, message) not in self.warnings:
            self.warnings.append((code, message))

    def note(self, message):
        if message not in self.notes:
            self.notes.append(message)

    def placeholder(self, code, message):
        self.placeholders.append((code, message))

    def cannot_verify(self, message):
        if message not in self.unverified:
            self.unverified.append(message)


def log(message):
    sys.stderr.write("polus-mkpatch: %s\n" % message)


def run(argv, cwd=None, env=None, log_path=None, what=None):
    """Runs argv; on failure raises Refused naming `what` with the output's tail."""
    if log_path:
        with open(log_path, "ab") as out:
            proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            with open(log_path, "rb") as f:
                tail = f.read()[-3000:].decode(errors="replace")
            raise BuildFailed("%s failed (exit %d); the end of %s:\n%s" % (what or argv[0], proc.returncode,
                                                                         log_path, tail))
        return ""
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BuildFailed("%s failed (exit %d):\n%s" % (what or " ".join(argv), proc.returncode,
                                                        proc.stdout.decode(errors="replace")[-3000:]))
    return proc.stdout.decode(errors="replace")


class BuildFailed(Exception):
    """A build step (old tree, new tree, fix, or the patch itself) failed."""


def is_generated_name(name):
    """Names the compiler makes up: clones and parts (foo.isra.0, foo.cold), static locals (x.0)."""
    return "." in name and not name.startswith(".")


def c_ident(text):
    """A C identifier made from `text` (dots and other characters become underscores)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)
    return out if not out[:1].isdigit() else "_" + out


def tool_dir():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
