#!/usr/bin/env python3
"""Replaces the copy of a section that BENCHMARKS.md includes with the section's file.

    python3 scripts/update-include.py BENCHMARKS.md benchmarks/soak.md

The copy sits between `<!-- include: benchmarks/soak.md -->` and
`<!-- end include: benchmarks/soak.md -->` (written by `mast-bench report --include`).
Exits 0 without a change when the document has no such markers.
"""
import sys

doc_path, section_path = sys.argv[1], sys.argv[2]
doc = open(doc_path).read()
begin = f"<!-- include: {section_path} -->\n"
end = f"\n<!-- end include: {section_path} -->"
if begin not in doc or end not in doc:
    sys.exit(0)
i, j = doc.index(begin) + len(begin), doc.index(end)
with open(doc_path, "w") as f:
    f.write(doc[:i] + open(section_path).read().rstrip() + doc[j:])
print(f"updated the {section_path} section of {doc_path}")
