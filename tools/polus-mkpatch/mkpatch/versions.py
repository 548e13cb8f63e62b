"""The version file: what earlier generated patches put where, so the next one fits on top.

Patch N names its functions and data `name_vN`. Later patches must reach what is live now: a
global whose type changed lives on as `ab_v1` in patch 1; a function whose signature changed is
called as `foo_v1`; a function replaced with the same signature is still called through its old
name (its entry jumps to the newest version), but its newest code, for stack inspection, is
`bar_v1`. The file records that per entity ("name" or "file.c:name"), with the target binary's
build-id the whole history is bound to.
"""
import json
import os

from .common import Refused


class Versions:
    def __init__(self, path):
        self.path = path
        self.state = {"format": 1, "target": None, "patches": [], "entities": {}}
        if path and os.path.exists(path):
            with open(path) as f:
                self.state = json.load(f)
            if self.state.get("format") != 1:
                raise Refused("%s is not a polus-mkpatch version file of format 1" % path)

    @property
    def number(self):
        return len(self.state["patches"]) + 1

    @property
    def suffix(self):
        return "_v%d" % self.number

    def target(self):
        return self.state.get("target")

    def call(self, key):
        """The symbol new code calls (or whose address it takes) for function `key`."""
        return self.state["entities"].get(key, {}).get("call", key)

    def code(self, key):
        """Where the newest code of function `key` runs (for stack inspection)."""
        return self.state["entities"].get(key, {}).get("code", key)

    def data(self, key):
        """Where the live instance of global `key` is."""
        return self.state["entities"].get(key, {}).get("data", key)

    def knows(self, name):
        return name in self.state["entities"]

    def record(self, name, patch_file, target, entities):
        if self.state.get("target") is None:
            self.state["target"] = target
        self.state["patches"].append({"number": self.number, "name": name, "file": patch_file})
        for key, fields in entities.items():
            self.state["entities"].setdefault(key, {}).update(fields)
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.state, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
