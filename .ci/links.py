#!/usr/bin/env python3
"""Every relative link in README.md and docs/*.md resolves, offline.

- `[text](path)`, `[text](path#anchor)`, `[text](#anchor)` and `[name]: path` definitions:
  the path (relative to the file that links) names a file or folder in the repository, and an
  anchor into a Markdown file matches one of its headings, slugged as GitHub does (lower case;
  letters, digits, `-`, `_` and spaces kept, spaces made `-`; a repeated slug gets `-1`, `-2`...)
  or an explicit `<a id="...">` / `<a name="...">`.
- Any tracked file (source, scripts, config, Markdown) that names `README.md#anchor` or
  `docs/<page>.md[#anchor]` in its text: the page exists and the anchor is one of its headings,
  so an error message that points into the manual cannot point at nothing.

Links inside fenced code blocks and inline code spans are not links and are skipped; so are
absolute URLs (`http:`, `https:`, `mailto:`). Exit status 1 lists every broken link.

Usage: python3 .ci/links.py [FILE.md ...]   (default: README.md docs/*.md)
"""

import os
import re
import subprocess
import sys
import unicodedata

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
# A page of the manual (or the front page) named in any tracked file.
MENTION = re.compile(r"(?<![\w/.-])((?:docs/[A-Za-z0-9_.-]+|README)\.md)(#[A-Za-z0-9_-]+)?")


def strip_code(lines):
    """The lines with fenced blocks blanked and inline code spans removed."""
    out, fence = [], None
    for line in lines:
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
            continue
        if m:
            fence = m.group(1)
            out.append("")
            continue
        out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return out


def slug(text):
    """GitHub's heading anchor."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in ("L", "N") or cat == "Mn":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


_anchors = {}


def anchors(path):
    """The anchors a Markdown file offers."""
    if path in _anchors:
        return _anchors[path]
    found, seen = set(), {}
    with open(path, encoding="utf-8") as f:
        raw = f.read().splitlines()
    fence = None
    for line in raw:
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        h = HEADING.match(line)
        if h:
            s = slug(h.group(2))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
        for a in HTML_ANCHOR.findall(line):
            found.add(a)
    _anchors[path] = found
    return found


def check_target(source, lineno, base_dir, target, errors):
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    path, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(base_dir, path)) if path else source
    where = f"{os.path.relpath(source, ROOT)}:{lineno}"
    if not dest.startswith(ROOT):
        errors.append(f"{where}: {target}: points outside the repository")
        return
    if not os.path.exists(dest):
        errors.append(f"{where}: {target}: no such file {os.path.relpath(dest, ROOT)}")
        return
    if anchor:
        if not dest.endswith(".md") or os.path.isdir(dest):
            errors.append(f"{where}: {target}: an anchor into a file that is not Markdown")
        elif anchor not in anchors(dest):
            errors.append(
                f"{where}: {target}: no heading with anchor #{anchor} in {os.path.relpath(dest, ROOT)}"
            )


def check_markdown(path, errors):
    with open(path, encoding="utf-8") as f:
        lines = strip_code(f.read().splitlines())
    base = os.path.dirname(path)
    for n, line in enumerate(lines, 1):
        for target in INLINE_LINK.findall(line):
            check_target(path, n, base, target, errors)
        d = DEFINITION.match(line)
        if d:
            check_target(path, n, base, d.group(1), errors)


def tracked_files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [os.path.join(ROOT, p) for p in out.decode().split("\0") if p]


def check_mentions(errors):
    """`docs/<page>.md#anchor` and `README.md#anchor` written anywhere in the repository."""
    for path in tracked_files():
        if path == os.path.abspath(__file__):
            continue  # its own docstring names the forms it checks
        if not os.path.isfile(path) or os.path.getsize(path) > 2_000_000:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for page, anchor in MENTION.findall(line):
                if page == "README.md" and not anchor:
                    continue  # "the README.md of k8s/" and the like: only anchors are claims
                check_target(path, n, ROOT, page + anchor, errors)


def main(argv):
    files = argv[1:]
    if not files:
        files = ["README.md"] + sorted(
            os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
        )
    errors = []
    for f in files:
        check_markdown(os.path.join(ROOT, f), errors)
    check_mentions(errors)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} broken link(s)", file=sys.stderr)
        return 1
    print(f"links: {len(files)} Markdown files checked, every relative link resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
