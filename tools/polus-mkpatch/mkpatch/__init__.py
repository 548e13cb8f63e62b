"""polus-mkpatch: turns a source fix into a checked Polus patch (see patch-format/GENERATOR.md)."""
