"""The DNS wire format on the hot path: parse queries, assemble responses (RFC 1035, 6891, 7871).

dnslib costs tens of microseconds per message, so the per-query path does not
use it. Queries are parsed here by hand into a :class:`Query`; responses are
the 12-byte header, the client's own question bytes (so the name's case is
echoed, RFC 1035 section 7.1 and 4035 case-preservation practice), pre-packed
answer sections whose owner names are compression pointers to offset 12 (the
question name), and an OPT record built per query.

Every malformed input raises :class:`FormatError` (answer FORMERR) or
:class:`Drop` (answer nothing: too short to carry an id, or not a query at
all). Nothing else may escape `parse_query`; the fuzz tests hold us to that.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from geodns.model import IPAddress

HEADER: Final = struct.Struct("!HHHHHH")
_RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPTION: Final = struct.Struct("!HH")
_ECS_FIXED: Final = struct.Struct("!HBB")

HEADER_SIZE: Final = 12
MAX_NAME_WIRE: Final = 255  # RFC 1035 section 3.1
MAX_LABEL: Final = 63
# Without EDNS a UDP response is at most 512 bytes (RFC 1035 section 4.2.1).
CLASSIC_UDP_SIZE: Final = 512
# The DNS flag day 2020 value: large enough for our answers, small enough to
# avoid IP fragmentation on any path.
OUR_UDP_SIZE: Final = 1232
MAX_TCP_MESSAGE: Final = 65535

TYPE_A: Final = 1
TYPE_NS: Final = 2
TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
TYPE_MX: Final = 15
TYPE_TXT: Final = 16
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_IXFR: Final = 251
TYPE_AXFR: Final = 252
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
CLASS_CH: Final = 3
CLASS_ANY: Final = 255

OPCODE_QUERY: Final = 0
RCODE_NOERROR: Final = 0
RCODE_FORMERR: Final = 1
RCODE_SERVFAIL: Final = 2
RCODE_NXDOMAIN: Final = 3
RCODE_NOTIMP: Final = 4
RCODE_REFUSED: Final = 5
RCODE_BADVERS: Final = 16  # extended: upper 8 bits go in the OPT TTL (RFC 6891 section 6.1.3)

OPTION_NSID: Final = 3  # RFC 5001
OPTION_ECS: Final = 8  # RFC 7871
FAMILY_IPV4: Final = 1
FAMILY_IPV6: Final = 2

_FLAG_QR: Final = 0x8000
_FLAG_AA: Final = 0x0400
_FLAG_TC: Final = 0x0200
_FLAG_RD: Final = 0x0100
_FLAG_CD: Final = 0x0010
_DO_BIT: Final = 0x8000
_ASCII_LOWER: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


class Drop(Exception):
    """Not worth an answer: shorter than a header, or a response rather than a query."""


class FormatError(Exception):
    """A malformed query (FORMERR). `query_id` is set when the header was readable."""

    def __init__(self, message: str, query_id: int, flags: int) -> None:
        super().__init__(message)
        self.query_id = query_id
        self.flags = flags


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option (RFC 7871 section 6), validated.

    The address stays raw bytes until someone needs it as an object: on the
    hot path it is only part of a cache key.
    """

    family: int
    source_prefix: int
    address_bytes: bytes  # ceil(source_prefix / 8) bytes, bits beyond the prefix zero

    @property
    def address(self) -> IPAddress:
        if self.family == FAMILY_IPV4:
            return IPv4Address(self.address_bytes.ljust(4, b"\x00"))
        return IPv6Address(self.address_bytes.ljust(16, b"\x00"))


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int  # the requestor's advertised payload size, at least 512
    version: int
    dnssec_ok: bool
    nsid: bool  # the client asked for our name server id
    client_subnet: ClientSubnet | None


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int  # the request's flags word, for RD and CD echo
    opcode: int
    question: bytes  # the question section exactly as sent: name, type, class
    name: str  # ASCII lower-case, dotted, with the trailing dot ("www.boxoffice.test.")
    labels: tuple[bytes, ...]  # the same name as ASCII lower-cased wire labels
    qtype: int
    qclass: int
    edns: Edns | None

    @property
    def max_udp_size(self) -> int:
        if self.edns is None:
            return CLASSIC_UDP_SIZE
        return max(CLASSIC_UDP_SIZE, min(self.edns.udp_size, OUR_UDP_SIZE))


def parse_query(packet: bytes) -> Query:
    """Parse one query message. Raises Drop or FormatError, nothing else."""
    packet = bytes(packet)  # slices of a bytearray would be unhashable labels
    if len(packet) < HEADER_SIZE:
        raise Drop("shorter than a DNS header")
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(packet)
    if flags & _FLAG_QR:
        raise Drop("a response, not a query")
    opcode = (flags >> 11) & 0xF
    if qdcount != 1:
        raise FormatError(f"{qdcount} questions; exactly one is supported", query_id, flags)
    if ancount or nscount:
        raise FormatError("a query carries no answer or authority records", query_id, flags)
    labels, offset = _read_name(packet, HEADER_SIZE, query_id, flags)
    if offset + 4 > len(packet):
        raise FormatError("question truncated", query_id, flags)
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    offset += 4
    question = packet[HEADER_SIZE:offset]
    edns = None
    for _ in range(arcount):
        record, offset = _read_additional(packet, offset, query_id, flags)
        if record is not None:
            if edns is not None:
                raise FormatError("more than one OPT record", query_id, flags)  # RFC 6891 section 6.1.1
            edns = record
    # A dot (and the escape character itself) inside a label is escaped as in
    # zone files, so it can never alias a different name: "a\\" + "b" is not "a.b".
    name = ".".join(label.decode("latin-1").replace("\\", "\\\\").replace(".", "\\.") for label in labels) + "."
    return Query(query_id, flags, opcode, question, name, labels, qtype, qclass, edns)


def _read_name(packet: bytes, offset: int, query_id: int, flags: int) -> tuple[tuple[bytes, ...], int]:
    labels: list[bytes] = []
    start = offset
    while True:
        if offset >= len(packet):
            raise FormatError("name runs past the end of the message", query_id, flags)
        length = packet[offset]
        if length == 0:
            offset += 1
            break
        if length > MAX_LABEL:
            # 0xC0 pointers cannot point anywhere useful in a question; 0x40/0x80 are unassigned.
            raise FormatError("compressed or extended label in the question", query_id, flags)
        label = packet[offset + 1 : offset + 1 + length]
        if len(label) != length:
            raise FormatError("label runs past the end of the message", query_id, flags)
        # RFC 4343: DNS names compare case-insensitively in ASCII only.
        labels.append(label.translate(_ASCII_LOWER))
        offset += 1 + length
    if offset - start > MAX_NAME_WIRE:
        raise FormatError("name longer than 255 octets", query_id, flags)
    return tuple(labels), offset


def _read_additional(packet: bytes, offset: int, query_id: int, flags: int) -> tuple[Edns | None, int]:
    # Only OPT is meaningful in a query's additional section; other records
    # (e.g. TSIG we do not support) are skipped whole.
    if offset >= len(packet):
        raise FormatError("additional record truncated", query_id, flags)
    if packet[offset] == 0:
        offset += 1
        is_root = True
    else:
        _, offset = _skip_name(packet, offset, query_id, flags)
        is_root = False
    if offset + _RR_FIXED.size > len(packet):
        raise FormatError("additional record truncated", query_id, flags)
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(packet, offset)
    offset += _RR_FIXED.size
    rdata = packet[offset : offset + rdlength]
    if len(rdata) != rdlength:
        raise FormatError("record data runs past the end of the message", query_id, flags)
    offset += rdlength
    if rtype != TYPE_OPT:
        return None, offset
    if not is_root:
        raise FormatError("OPT record owner is not the root", query_id, flags)
    version = (ttl >> 16) & 0xFF
    dnssec_ok = bool(ttl & _DO_BIT)
    nsid = False
    client_subnet = None
    position = 0
    while position < len(rdata):
        if position + _OPTION.size > len(rdata):
            raise FormatError("EDNS option truncated", query_id, flags)
        code, length = _OPTION.unpack_from(rdata, position)
        position += _OPTION.size
        data = rdata[position : position + length]
        if len(data) != length:
            raise FormatError("EDNS option runs past its record", query_id, flags)
        position += length
        if code == OPTION_NSID:
            nsid = True
        elif code == OPTION_ECS:
            if client_subnet is not None:
                raise FormatError("more than one client subnet option", query_id, flags)
            client_subnet = _parse_client_subnet(data, query_id, flags)
    return Edns(rclass, version, dnssec_ok, nsid, client_subnet), offset


def _skip_name(packet: bytes, offset: int, query_id: int, flags: int) -> tuple[None, int]:
    for _ in range(MAX_NAME_WIRE):
        if offset >= len(packet):
            break
        length = packet[offset]
        if length == 0:
            return None, offset + 1
        if length & 0xC0 == 0xC0:
            return None, offset + 2
        if length > MAX_LABEL:
            break
        offset += 1 + length
    raise FormatError("malformed name in the additional section", query_id, flags)


def _parse_client_subnet(data: bytes, query_id: int, flags: int) -> ClientSubnet:
    # RFC 7871 section 6 and 7.1.2: wrong lengths, a non-zero scope, or set
    # bits beyond the source prefix are all FORMERR.
    if len(data) < _ECS_FIXED.size:
        raise FormatError("client subnet option too short", query_id, flags)
    family, source_prefix, scope_prefix = _ECS_FIXED.unpack_from(data)
    address = data[_ECS_FIXED.size :]
    if family == FAMILY_IPV4:
        width = 4
    elif family == FAMILY_IPV6:
        width = 16
    else:
        raise FormatError(f"client subnet family {family} is not IPv4 or IPv6", query_id, flags)
    if source_prefix > width * 8:
        raise FormatError("client subnet source prefix longer than the address", query_id, flags)
    if scope_prefix != 0:
        raise FormatError("client subnet scope prefix must be 0 in a query", query_id, flags)
    if len(address) != (source_prefix + 7) // 8:
        raise FormatError("client subnet address length does not match its prefix", query_id, flags)
    if source_prefix % 8 and address[-1] & (0xFF >> (source_prefix % 8)):
        raise FormatError("client subnet address has bits set beyond its prefix", query_id, flags)
    return ClientSubnet(family, source_prefix, bytes(address))


# Responses ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sections:
    """Pre-packed answer and authority sections, names compressed against offset 12."""

    body: bytes
    answer_count: int
    authority_count: int

    @classmethod
    def empty(cls) -> Sections:
        return cls(b"", 0, 0)


def opt_record(
    *,
    extended_rcode: int = 0,
    dnssec_ok: bool = False,
    nsid: bytes | None = None,
    client_subnet: ClientSubnet | None = None,
    scope_prefix: int = 0,
) -> bytes:
    """Our OPT record (RFC 6891 section 6.1.2): payload size, extended rcode, echoed options."""
    options = b""
    if client_subnet is not None:
        payload = _ECS_FIXED.pack(client_subnet.family, client_subnet.source_prefix, scope_prefix)
        payload += client_subnet.address_bytes
        options += _OPTION.pack(OPTION_ECS, len(payload)) + payload
    if nsid is not None:
        options += _OPTION.pack(OPTION_NSID, len(nsid)) + nsid
    ttl = (extended_rcode << 24) | (_DO_BIT if dnssec_ok else 0)
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, OUR_UDP_SIZE, ttl, len(options)) + options


def response(
    query: Query,
    rcode: int,
    sections: Sections,
    *,
    authoritative: bool,
    opt: bytes | None,
    limit: int,
) -> bytes:
    """Assemble a response to `query`; if it exceeds `limit` bytes, send it truncated (TC)."""
    flags = _FLAG_QR | (query.opcode << 11) | (query.flags & (_FLAG_RD | _FLAG_CD)) | (rcode & 0xF)
    if authoritative:
        flags |= _FLAG_AA
    extra = opt or b""
    arcount = 1 if opt else 0
    size = HEADER_SIZE + len(query.question) + len(sections.body) + len(extra)
    if size > limit:
        # RFC 2181 section 9: drop the sections that do not fit and set TC so
        # the resolver retries over TCP; keep the OPT so EDNS still works.
        flags |= _FLAG_TC
        header = HEADER.pack(query.id, flags, 1, 0, 0, arcount)
        return header + query.question + extra
    header = HEADER.pack(query.id, flags, 1, sections.answer_count, sections.authority_count, arcount)
    return header + query.question + sections.body + extra


def error_response(query_id: int, request_flags: int, rcode: int) -> bytes:
    """A header-only response, for queries whose question could not be read."""
    opcode = (request_flags >> 11) & 0xF
    flags = _FLAG_QR | (opcode << 11) | (request_flags & _FLAG_RD) | (rcode & 0xF)
    return HEADER.pack(query_id, flags, 0, 0, 0, 0)
