"""The manual pages in man/: complete sections, clean roff, and every option and key the programs know."""

import dataclasses
import re
import subprocess

import pytest

from hacheck import __version__
from hacheck.config import Config
from tests.conftest import REPO_ROOT, require_command, tool_argv, tool_env

MAN = REPO_ROOT / "man"
TOOLS = ("haup", "hadown", "hastatus", "hashowdowned", "halist", "haupdown")
COMMAND_SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT",
                    "FILES", "EXAMPLES", "SEE ALSO")
FILE_SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "KEYS", "FILES", "EXAMPLES", "SEE ALSO")
# The options each tool's page must explain: those its action uses (the others are ignored).
TOOL_OPTIONS = {
    "haup": {"--spool-root", "--service-port", "--service-host", "--wait", "--timeout", "--port", "--help"},
    "hadown": {"--spool-root", "--reason", "--expiration", "--service-port", "--service-host", "--drain",
               "--wait", "--timeout", "--idle", "--port", "--help"},
    "hastatus": {"--spool-root", "--service-port", "--service-host", "--json", "--effective", "--lb", "--port",
                 "--help"},
    "hashowdowned": {"--spool-root", "--json", "--help"},
    "halist": {"--port", "--json", "--help"},
}
CONFIG_KEYS = sorted(field.name for field in dataclasses.fields(Config) if field.name != "source")


def page(name: str) -> str:
    return (MAN / name).read_text(encoding="utf-8")


def sections(text: str) -> list:
    return [line[4:].strip().strip('"') for line in text.splitlines() if line.startswith(".SH ")]


def documented_options(text: str) -> set:
    """Long options named in the OPTIONS section's tags (roff writes a dash as \\-)."""
    options = text.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0].replace("\\-", "-")
    options = re.sub(r"\\f[BIRP]", " ", options)  # font changes
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", options))


def help_options(program: str) -> set:
    """The long options ``program --help`` lists."""
    result = subprocess.run(tool_argv(program) + ["--help"], env=tool_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", result.stdout))


def all_pages() -> list:
    return sorted(path.name for path in MAN.iterdir())


def test_a_page_for_the_daemon_every_tool_and_the_configuration_file():
    assert all_pages() == sorted(["hacheck.1", "hacheck.yaml.5"] + [f"{tool}.1" for tool in TOOLS])


@pytest.mark.parametrize("name", ["hacheck.1"] + [f"{tool}.1" for tool in TOOLS])
def test_command_pages_have_every_section(name):
    assert sections(page(name)) == list(COMMAND_SECTIONS)


def test_configuration_page_has_every_section():
    assert sections(page("hacheck.yaml.5")) == list(FILE_SECTIONS)


@pytest.mark.parametrize("name", ["hacheck.1", "hacheck.yaml.5"] + [f"{tool}.1" for tool in TOOLS])
def test_title_line_names_the_page_and_this_version(name):
    stem, section = name.rsplit(".", 1)
    title = page(name).splitlines()[0]
    assert title.startswith(f'.TH {stem.upper()} {section} "'), title
    assert f'"hacheck {__version__}"' in title


@pytest.mark.parametrize("name", ["hacheck.1", "hacheck.yaml.5"] + [f"{tool}.1" for tool in TOOLS])
def test_roff_has_no_warnings(name):
    groff = require_command("groff")
    result = subprocess.run([groff, "-man", "-ww", "-z", "-Tutf8", str(MAN / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize("program", ["hacheck", "haupdown"])
def test_daemon_and_haupdown_pages_explain_every_option_of_help(program):
    assert documented_options(page(f"{program}.1")) == help_options(program)


@pytest.mark.parametrize("tool", sorted(TOOL_OPTIONS))
def test_tool_pages_explain_the_options_of_their_action(tool):
    documented = documented_options(page(f"{tool}.1"))
    assert TOOL_OPTIONS[tool] <= documented
    # Nothing stale: every option a page names exists.
    assert documented <= help_options(tool)


def test_configuration_page_explains_every_key():
    keys = page("hacheck.yaml.5").split(".SH KEYS", 1)[1].split("\n.SH ", 1)[0]
    documented = set(re.findall(r"^\.BR ([a-z_]+)(?: \"|,)", keys, re.M))
    documented |= set(re.findall(r'^\.BR [a-z_]+ ", " ([a-z_]+)', keys, re.M))
    assert documented == set(CONFIG_KEYS)


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_every_key_is_in_the_docs_table_and_the_debian_conffile(key):
    daemon_page = (REPO_ROOT / "docs" / "daemon.md").read_text(encoding="utf-8")
    assert f"| `{key}` |" in daemon_page
    conffile = (REPO_ROOT / "debian" / "hacheck.yaml").read_text(encoding="utf-8")
    assert re.search(rf"^#{key}:", conffile, re.M), f"{key} is not in debian/hacheck.yaml"
