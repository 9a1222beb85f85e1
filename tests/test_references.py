"""No reference leads nowhere: every file, page and manual page the documentation names exists.

Walks README.md, docs/*.md, the manual pages in man/, the systemd units' Documentation=,
and the comments and docstrings of the code, tests, tools and CI scripts. A path in
the repository (``tests/...``, ``docs/...``, a Markdown link) must exist in it; an
installed path (``/usr/share/doc/hacheck/...``, ``/usr/share/man/...``, ``/etc/hacheck/...``,
``/lib/systemd/system/hacheck.service``) and a manual page (``man:hacheck(1)``, ``hadown(1)``,
``man hacheck.yaml``) must be installed by the Debian package as debian/ describes it.
"""

import ast
import fnmatch
import io
import re
import tokenize
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = "hacheck"
DOC_DIR = f"/usr/share/doc/{PACKAGE}"
# Pages of other packages the documentation may point at.
OTHER_PACKAGES_PAGES = {("haproxy", "1")}
# A site's own files from the original's package, which docs/debian.md and the
# systemd test name and this package never installs.
SITE_FILES = {f"/etc/{PACKAGE}.yaml"}
# Files the tools write into the checkout; each must be in .gitignore.
GENERATED = {"bench/results.json"}
# dh_compress leaves files of at most this size in /usr/share/doc uncompressed.
DH_COMPRESS_MIN_BYTES = 4096

REPO_PATH = re.compile(r"(?<![\w/.~$@-])((?:tests|hacheck|bench|docs|debian|man|fuzz|bin|\.ci)/[\w.*/@-]*)")
INSTALLED_PATH = re.compile(r"(?<![\w.~$/-])(/(?:usr|lib|etc)/[\w.*/@-]*)")
CHECKED_INSTALLED = (f"{DOC_DIR}/", "/usr/share/man/", f"/lib/systemd/system/{PACKAGE}", f"/etc/{PACKAGE}",
                     f"/etc/logrotate.d/{PACKAGE}")
MARKDOWN_FILE = re.compile(r"(?<![\w/.-])([\w./-]*[A-Za-z0-9_]\.md)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
MAN_URI = re.compile(r"\bman:([\w.@-]+)\((\d)\)")
MAN_REFERENCE = re.compile(r"(?<![\w.:-])([a-z][\w.-]*[a-z0-9])\((\d)\)")
ROFF_MAN_REFERENCE = re.compile(r"^\.BR ([a-z][\w.\\-]*) \((\d)\)", re.M)
MAN_COMMAND = re.compile(r"`man ([a-z][\w.-]*)`")
FILE_URI = re.compile(r"\bfile://(/\S+)")

Problem = Tuple[str, str]  # (where, what is wrong)


# ---------------------------------------------------------------- what the package installs

def _lines(name: str) -> List[str]:
    path = REPO_ROOT / "debian" / name
    if not path.exists():
        return []
    return [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip()]


def _matches(pattern: str) -> List[Path]:
    return sorted(REPO_ROOT.glob(pattern))


def _compress_exclusions() -> List[str]:
    rules = (REPO_ROOT / "debian" / "rules").read_text(encoding="utf-8")
    return re.findall(r"dh_compress\b.*?-X\s*(\S+)", rules)


def _doc_path(source: Path, relative: str) -> str:
    """Where dh_installdocs puts ``source``, with dh_compress's .gz for a large file."""
    excluded = any(pattern in source.name for pattern in _compress_exclusions())
    compressed = source.stat().st_size > DH_COMPRESS_MIN_BYTES and not excluded and source.name != "copyright"
    return f"{DOC_DIR}/{relative}" + (".gz" if compressed else "")


def installed_paths() -> Set[str]:
    """Absolute paths the Debian package installs, from debian/*.install, .docs, .manpages, .dirs and units."""
    paths = {f"{DOC_DIR}/copyright", f"{DOC_DIR}/changelog.gz"}  # dh_installdocs, dh_installchangelogs
    for line in _lines(f"{PACKAGE}.install"):
        *sources, destination = line.split()
        for source in (path for pattern in sources for path in _matches(pattern)):
            paths.add(f"/{destination.strip('/')}/{source.name}")
    for line in _lines(f"{PACKAGE}.docs"):
        for source in _matches(line):
            if source.is_dir():
                for file in sorted(p for p in source.rglob("*") if p.is_file()):
                    paths.add(_doc_path(file, str(file.relative_to(source.parent))))
            else:
                paths.add(_doc_path(source, source.name))
    for line in _lines(f"{PACKAGE}.manpages"):
        for source in _matches(line):
            section = source.suffix.lstrip(".")
            paths.add(f"/usr/share/man/man{section}/{source.name}.gz")
    for line in _lines(f"{PACKAGE}.dirs"):
        paths.add(f"/{line.strip('/')}")
    for unit in _matches(f"debian/{PACKAGE}*.service") + _matches(f"debian/{PACKAGE}*.socket"):
        name = unit.name if unit.name.count(".") == 1 else unit.name[len(PACKAGE) + 1:]
        paths.add(f"/lib/systemd/system/{name}")
    if (REPO_ROOT / "debian" / f"{PACKAGE}.logrotate").exists():
        paths.add(f"/etc/logrotate.d/{PACKAGE}")
    return paths


def installed_pages() -> Set[Tuple[str, str]]:
    """(name, section) of every manual page the package installs."""
    pages = set()
    for path in installed_paths():
        match = re.fullmatch(r"/usr/share/man/man(\d)/(.+)\.(\d)\.gz", path)
        if match:
            pages.add((match.group(2), match.group(3)))
    return pages


# ---------------------------------------------------------------- checking one reference

def check_repository_path(where: str, reference: str) -> List[Problem]:
    reference = reference.rstrip(".,:;")
    if reference in GENERATED:
        return []
    if "*" in reference:
        found = _matches(reference)
    else:
        found = [REPO_ROOT / reference] if (REPO_ROOT / reference).exists() else []
    return [] if found else [(where, f"{reference}: not in the repository")]


def check_installed_path(where: str, reference: str) -> List[Problem]:
    reference = reference.rstrip(".,:;")
    if reference in SITE_FILES or not reference.startswith(CHECKED_INSTALLED):
        return []
    installed = installed_paths()
    if "*" in reference:
        ok = any(fnmatch.fnmatch(path, reference) for path in installed)
    else:
        directory = reference.rstrip("/") + "/"
        ok = reference in installed or any(path.startswith(directory) for path in installed)
    return [] if ok else [(where, f"{reference}: not installed by the Debian package")]


def check_page(where: str, name: str, section: str) -> List[Problem]:
    name = name.replace("\\-", "-")
    if (name, section) in OTHER_PACKAGES_PAGES:
        return []
    if not (REPO_ROOT / "man" / f"{name}.{section}").exists():
        return [(where, f"{name}({section}): no such page in man/")]
    if (name, section) not in installed_pages():
        return [(where, f"{name}({section}): not installed by the Debian package")]
    return []


def check_man_command(where: str, name: str) -> List[Problem]:
    sections = [section for page, section in installed_pages() if page == name]
    return [] if sections else [(where, f"man {name}: no such page installed")]


def check_markdown_file(where: str, source: Path, reference: str) -> List[Problem]:
    """A ``*.md`` named in prose: relative to the file, or to the repository or docs/."""
    if "/usr/" in reference or reference.startswith(("http", "file")):
        return []
    candidates = [source.parent / reference, REPO_ROOT / reference, REPO_ROOT / "docs" / reference]
    return [] if any(path.exists() for path in candidates) else [(where, f"{reference}: no such file")]


# ---------------------------------------------------------------- finding references

def heading_anchors(text: str) -> Set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = set()
    for heading in re.findall(r"^#+ (.*)$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def check_markdown_link(where: str, source: Path, link: str) -> List[Problem]:
    if re.match(r"[a-z]+:", link):  # https:, mailto:, ...
        return []
    target, _, anchor = link.partition("#")
    path = (source.parent / target).resolve() if target else source
    if not path.exists():
        return [(where, f"link {link}: {target} does not exist")]
    if REPO_ROOT.resolve() not in path.parents and path != REPO_ROOT.resolve():
        return [(where, f"link {link}: outside the repository")]
    if anchor and path.suffix == ".md" and anchor not in heading_anchors(path.read_text(encoding="utf-8")):
        return [(where, f"link {link}: no heading #{anchor} in {target or source.name}")]
    return []


def check_text(where: str, source: Path, text: str, markdown: bool = False) -> List[Problem]:
    """Every kind of reference in one piece of prose (a page, a comment, a docstring)."""
    problems = []
    if markdown:
        for link in MARKDOWN_LINK.findall(text):
            problems += check_markdown_link(where, source, link)
        for name in MAN_COMMAND.findall(text):
            problems += check_man_command(where, name)
    for reference in REPO_PATH.findall(text):
        problems += check_repository_path(where, reference)
    for reference in INSTALLED_PATH.findall(text):
        problems += check_installed_path(where, reference)
    for reference in FILE_URI.findall(text):
        problems += check_installed_path(where, reference)
    for name, section in MAN_URI.findall(text):
        problems += check_page(where, name, section)
    if markdown:
        for name, section in MAN_REFERENCE.findall(text):
            problems += check_page(where, name, section)
    for reference in MARKDOWN_FILE.findall(text):
        problems += check_markdown_file(where, source, reference)
    return problems


def python_prose(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield (node.body[0].lineno, docstring)


def shell_prose(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, text) of every comment of a shell script, makefile or unit file."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = re.search(r"(?:^|\s)#(.*)$", line)
        if match:
            yield number, match.group(1)


def is_python(path: Path) -> bool:
    if path.suffix == ".py":
        return True
    first = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    return first.startswith("#!") and "python" in first


def code_files() -> List[Path]:
    files = [p for folder in ("hacheck", "tests", "bench", "fuzz") for p in (REPO_ROOT / folder).rglob("*.py")]
    files += [p for p in (REPO_ROOT / "bin").iterdir() if p.is_file()]
    files += [p for p in (REPO_ROOT / ".ci").iterdir() if p.is_file() and p.suffix != ".txt"]
    files += [REPO_ROOT / "setup.py", REPO_ROOT / "debian" / "rules"]
    files += [p for p in (REPO_ROOT / "debian").iterdir()
              if p.is_file() and p.suffix in (".service", ".socket", ".postinst", ".postrm", ".prerm",
                                              ".preinst", ".yaml", ".logrotate")]
    return sorted(p for p in files if p.exists() and "__pycache__" not in p.parts)


def where(path: Path, line: int = 0) -> str:
    relative = path.relative_to(REPO_ROOT)
    return f"{relative}:{line}" if line else str(relative)


# ---------------------------------------------------------------- the tests

def markdown_files() -> List[Path]:
    return [REPO_ROOT / "README.md"] + sorted((REPO_ROOT / "docs").glob("*.md"))


def assert_no_problems(problems: List[Problem]) -> None:
    assert not problems, "references that lead nowhere:\n" + "\n".join(f"  {w}: {what}" for w, what in problems)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_markdown_references(path):
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        problems += check_text(where(path, number), path, line, markdown=True)
    assert_no_problems(problems)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "man").glob("*.[1-8]")), ids=lambda p: p.name)
def test_manual_page_references(path):
    text = path.read_text(encoding="utf-8")
    problems = [(where(path), problem) for _, problem in check_text(where(path), path, text.replace("\\-", "-"))]
    for name, section in ROFF_MAN_REFERENCE.findall(text):
        problems += check_page(where(path), name, section)
    see_also = text.split(".SH SEE ALSO", 1)[1]
    assert ROFF_MAN_REFERENCE.findall(see_also), f"{path.name}: SEE ALSO names no page"
    assert_no_problems(problems)


def test_units_documentation_leads_somewhere():
    units = _matches("debian/*.service") + _matches("debian/*.socket")
    assert units
    problems = []
    for unit in units:
        lines = [line for line in unit.read_text(encoding="utf-8").splitlines() if line.startswith("Documentation=")]
        assert lines, f"{unit.name} has no Documentation="
        for line in lines:
            for entry in line.split("=", 1)[1].split():
                if entry.startswith("man:"):
                    problems += check_text(where(unit), unit, entry)
                    assert MAN_URI.fullmatch(entry), f"{unit.name}: {entry} is not man:NAME(SECTION)"
                elif entry.startswith("file://"):
                    path = entry[len("file://"):]
                    if not path.startswith(CHECKED_INSTALLED):
                        problems.append((where(unit), f"{entry}: not a file the package installs"))
                    problems += check_installed_path(where(unit), path)
    assert_no_problems(problems)


@pytest.mark.parametrize("path", code_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_comments_and_docstrings_references(path):
    prose = python_prose(path) if is_python(path) else shell_prose(path)
    problems = []
    for number, text in prose:
        problems += check_text(where(path, number), path, text)
    assert_no_problems(problems)


def test_generated_files_are_ignored_by_git():
    ignored = (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").split()
    for path in GENERATED:
        assert any(fnmatch.fnmatch(path, pattern.lstrip("/")) for pattern in ignored), path


def test_the_package_installs_the_documentation_and_every_manual_page():
    installed = installed_paths()
    assert f"{DOC_DIR}/README.md" in installed
    for page in (REPO_ROOT / "docs").glob("*.md"):
        assert f"{DOC_DIR}/docs/{page.name}" in installed, page.name
    for page in (REPO_ROOT / "man").iterdir():
        assert f"/usr/share/man/man{page.suffix[1:]}/{page.name}.gz" in installed, page.name


# A reference that leads nowhere is found, whatever its kind.
PLANTED = [
    ("a link to a missing page", "see [daemon](docs/nothing-here.md)", True),
    ("a link to a missing heading", "see [daemon](docs/daemon.md#no-such-heading)", True),
    ("a repository path", "measured by `tests/e2e/test_nothing_here.py`", False),
    ("a glob that matches nothing", "every `debian/*.nothing` file", False),
    ("a Markdown file outside the repository", "as OUTSIDE.md section 2 says", False),
    ("an installed document the package lacks", "file:///usr/share/doc/hacheck/debian.md", False),
    ("an installed path the package lacks", "see /usr/share/doc/hacheck/docs/nothing.md", False),
    ("a manual page that does not exist", "Documentation=man:hacheck-nothing(8)", False),
    ("a man command for a missing page", "read `man hacheck-nothing`", True),
    ("a page reference in prose", "see `hanothing(1)`", True),
]


@pytest.mark.parametrize("description, text, markdown", PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_bad_reference_is_found(description, text, markdown):
    problems = check_text("planted", REPO_ROOT / "README.md", text, markdown=markdown)
    assert problems, description


def test_good_references_pass():
    text = ("[daemon](docs/daemon.md#configuration) `tests/e2e/test_haproxy.py` `debian/*.service` "
            "man:hacheck.yaml(5) `hadown(1)` `man hacheck` file:///usr/share/doc/hacheck/docs/debian.md "
            "/etc/hacheck/hacheck.yaml /usr/share/man/man1/ docs/compatibility.md")
    assert check_text("good", REPO_ROOT / "README.md", text, markdown=True) == []
