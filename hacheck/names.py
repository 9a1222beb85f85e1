"""What a service name, a host and a port may be: one set of rules for the daemon, the agent and the tools.

A downtime is only useful when a check URL or an agent request can name it,
so the tools refuse what the daemon could never match. Spool files already on
disk with other names are still read, listed and counted (see ``hacheck.spool``).
"""

import ipaddress
import re
from typing import Optional

# The characters of a service name, as a regular expression and for people.
SERVICE_PATTERN = r"[.a-zA-Z0-9_-]+"
SERVICE_CHARACTERS = "letters, digits, '.', '_' and '-'"
# A service name is a spool file name, and file names are at most this many bytes.
MAX_NAME_BYTES = 255

HOST_CHARACTERS = "an IPv4 or IPv6 address, or a host name of letters, digits, '.', '_' and '-'"
MAX_PORT = 65535
# ASCII digits only: str.isdigit() also accepts "¹" and int() accepts "8_0" and " 80".
PORT_PATTERN = r"[0-9]+"
_PORT_DIGITS = re.compile(PORT_PATTERN)

_SERVICE = re.compile(SERVICE_PATTERN)
# Host names and IPv4/IPv6 literals: anything else is not a host.
_HOST_TEXT = re.compile(r"[A-Za-z0-9._:%-]{1,255}")
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class InvalidName(ValueError):
    """A service name, host or port that no check URL or agent request can name; the message says why."""


def service_name_problem(service: str) -> Optional[str]:
    """Why ``service`` cannot be a service name, or None when it can."""
    if not _SERVICE.fullmatch(service):
        return f"invalid service name {service[:60]!r}: use only {SERVICE_CHARACTERS}"
    if service in (".", ".."):
        return f"invalid service name {service!r}: '.' and '..' are not service names"
    if len(service) > MAX_NAME_BYTES:  # the pattern allows ASCII only: characters are bytes
        return f"invalid service name: longer than {MAX_NAME_BYTES} bytes"
    return None


def check_service_name(service: str) -> str:
    """``service`` when it is a service name; InvalidName otherwise."""
    problem = service_name_problem(service)
    if problem is not None:
        raise InvalidName(problem)
    return service


def is_host(text: str) -> bool:
    """An IPv4 or IPv6 address, or a DNS host name; nothing else may become a check's target."""
    if not _HOST_TEXT.fullmatch(text):
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if len(text) > 253 or all(label.isdigit() for label in labels):  # digits only: a broken IPv4
        return False
    return all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


def check_host(host: str) -> str:
    """``host`` when it is a host a check can be aimed at; InvalidName otherwise."""
    if not is_host(host):
        raise InvalidName(f"invalid host {host[:60]!r}: use {HOST_CHARACTERS}")
    return host


def parse_port(text: str, minimum: int = 1) -> int:
    """A port written in ASCII decimal (leading zeros allowed), from ``minimum`` to 65535; InvalidName otherwise."""
    # Leading zeros go first: int() refuses strings of more than 4300 digits.
    digits = text.lstrip("0") if _PORT_DIGITS.fullmatch(text) else None
    if digits is None or len(digits) > 5 or not minimum <= int(digits or "0") <= MAX_PORT:
        shown = f"{text[:20]}{'...' if len(text) > 20 else ''}"
        raise InvalidName(f"invalid port {shown!r}: ports go from {minimum} to {MAX_PORT}, in decimal")
    return int(digits or "0")
