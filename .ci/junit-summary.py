#!/usr/bin/env python3
"""One Markdown summary of every JUnit file under a directory (the workflow's `results` job):
a line per file with its counts, the totals, and each failed case with its message. Exits 1
when any case failed or no file was found, so the summary is also a check."""
import pathlib
import sys
import xml.etree.ElementTree as ET

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
files = sorted(root.rglob("*.xml"))
rows, failed_cases, totals = [], [], [0, 0]
for f in files:
    cases = list(ET.parse(f).getroot().iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    rows.append(f"| {f.relative_to(root)} | {len(cases)} | {len(failed)} |")
    totals[0] += len(cases)
    totals[1] += len(failed)
    for c in failed:
        why = c.find("failure") if c.find("failure") is not None else c.find("error")
        failed_cases.append(f"- `{c.get('classname', '')}` {c.get('name')}: {why.get('message', '')}")
print("## macvlan-lab results\n")
print("| file | cases | failed |\n|---|---|---|")
print("\n".join(rows))
print(f"| **all** | **{totals[0]}** | **{totals[1]}** |\n")
print("\n".join(failed_cases) if failed_cases else "Every case passed.")
sys.exit(1 if totals[1] or not files else 0)
