"""Query a DNS server with the real clients users run (`dig`, `kdig`) and read what they print.

Both tools are run as subprocesses against 127.0.0.1 on a given port, with one
try and a short timeout, and their full text output is parsed into a
:class:`DnsReply`: status, header flags, the answer and authority records, and
the EDNS client-subnet and NSID options. A missing tool fails the test with the
Debian package to install (STYLE §14: no mocks of things a user runs, and a
missing client must not turn into a silent skip).

`udp_exchange` is for what the clients cannot send: raw, malformed packets.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass, field

import pytest

LOOPBACK = "127.0.0.1"
# Debian packages of the two clients, named in the failure when one is missing.
DIG_PACKAGE = "bind9-dnsutils"
KDIG_PACKAGE = "knot-dnsutils"
# Per query: the tools wait 2 s for one try; the process gets some slack on top
# (dig may retry over TCP after a truncated answer, or after BADVERS).
CLIENT_WAIT_SECONDS = 2
PROCESS_TIMEOUT_SECONDS = 10.0
MAX_DATAGRAM = 65535

_HEADER = struct.Struct("!HHHHHH")
_STATUS = re.compile(r"->>HEADER<<- opcode: \w+[,;] status: (\w+)")
_FLAGS = re.compile(r"^;; [Ff]lags: ([a-z ]*);", re.MULTILINE)
_CLIENT_SUBNET = re.compile(r"CLIENT-SUBNET: (\S+)")
_NSID = re.compile(r'NSID: [0-9A-Fa-f ]+\(?"([^"]*)"')
_SECTIONS = {";; ANSWER SECTION:": "answer", ";; AUTHORITY SECTION:": "authority"}


def require_tool(name: str, package: str) -> str:
    """The path of client `name`; fails the test (never skips) naming the package when missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: the GeoDNS end-to-end tests need it (apt-get install {package})")
    return path


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    ttl: int
    rtype: str
    data: str


@dataclass(slots=True)
class DnsReply:
    """One client run. `status` is None when no answer arrived (see `text`)."""

    text: str
    status: str | None = None
    flags: frozenset[str] = frozenset()
    answer: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    client_subnet: str | None = None  # "address/source/scope" as the client prints it
    nsid: str | None = None

    @property
    def addresses(self) -> list[str]:
        """The A and AAAA data of the answer section, in order."""
        return [record.data for record in self.answer if record.rtype in ("A", "AAAA")]

    @property
    def over_tcp(self) -> bool:
        # dig: ";; SERVER: 127.0.0.1#PORT(127.0.0.1) (TCP)"; kdig: ";; From 127.0.0.1@PORT(TCP) in …".
        return bool(re.search(r"^;; (SERVER:|From) .*\(TCP\)", self.text, re.MULTILINE))


def dig(port: int, *args: str) -> DnsReply:
    """Run `dig @127.0.0.1 -p PORT +tries=1 +time=2 ARGS…` and parse its output."""
    return _run([require_tool("dig", DIG_PACKAGE), "-p", str(port), f"@{LOOPBACK}", "+tries=1",
                 f"+time={CLIENT_WAIT_SECONDS}", *args])  # fmt: skip


def kdig(port: int, *args: str) -> DnsReply:
    """Run `kdig @127.0.0.1 -p PORT +retry=0 +timeout=2 ARGS…` (kdig's spelling of one 2 s try)."""
    return _run([require_tool("kdig", KDIG_PACKAGE), "-p", str(port), f"@{LOOPBACK}", "+retry=0",
                 f"+timeout={CLIENT_WAIT_SECONDS}", *args])  # fmt: skip


def _run(command: list[str]) -> DnsReply:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS, check=False)
    return parse_output(completed.stdout + completed.stderr)


def parse_output(text: str) -> DnsReply:
    """Parse dig's or kdig's default text output; the last message printed wins."""
    reply = DnsReply(text)
    section: str | None = None
    for line in text.splitlines():
        if "->>HEADER<<-" in line:
            # dig prints each message it got (e.g. before a retry); keep the last one only.
            reply.answer, reply.authority, section = [], [], None
        if line in _SECTIONS:
            section = _SECTIONS[line]
            continue
        if not line.strip() or (line.startswith(";;") and line.endswith("SECTION:")):
            section = None  # a blank line or another section (question, additional, EDNS) ends ours
            continue
        if line.startswith(";"):
            continue
        if section is not None:
            name, ttl, _class, rtype, *data = line.split(None, 4)
            getattr(reply, section).append(Record(name, int(ttl), rtype, data[0] if data else ""))
    statuses = _STATUS.findall(text)
    reply.status = statuses[-1] if statuses else None
    flags = _FLAGS.findall(text)
    reply.flags = frozenset(flags[-1].split()) if flags else frozenset()
    subnets = _CLIENT_SUBNET.findall(text)
    reply.client_subnet = subnets[-1] if subnets else None
    nsids = _NSID.findall(text)
    reply.nsid = nsids[-1] if nsids else None
    return reply


# ---------------------------------------------------------------- raw packets


@dataclass(frozen=True, slots=True)
class RawHeader:
    id: int
    flags: int
    counts: tuple[int, int, int, int]

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & 0x0200)


def read_header(packet: bytes) -> RawHeader:
    query_id, flags, *counts = _HEADER.unpack_from(packet)
    return RawHeader(query_id, flags, (counts[0], counts[1], counts[2], counts[3]))


def header(query_id: int, *, qdcount: int = 1, flags: int = 0x0100) -> bytes:
    """A query header (RD set by default) with the given question count and no records."""
    return _HEADER.pack(query_id, flags, qdcount, 0, 0, 0)


def question(name: str, qtype: int = 1) -> bytes:
    """A question section: `name` in wire format, `qtype`, class IN."""
    labels = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split("."))
    return labels + b"\x00" + struct.pack("!HH", qtype, 1)


def udp_socket(timeout: float = CLIENT_WAIT_SECONDS) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind((LOOPBACK, 0))
    return sock


def udp_exchange(port: int, packet: bytes) -> bytes:
    """Send one datagram and return the first datagram that comes back (TimeoutError if none)."""
    with udp_socket() as sock:
        sock.sendto(packet, (LOOPBACK, port))
        data, _ = sock.recvfrom(MAX_DATAGRAM)
        return data
