"""An in-memory authoritative DNS server for the email-dns unit tests (no sockets, no tests)."""
import dataclasses
from typing import Optional

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update

from certbot_email_dns.rfc2136 import Endpoint


@dataclasses.dataclass
class FakeServer:
    """Serves ``zones`` authoritatively; applies TSIG-less checked updates; records traffic."""

    zones: set[str]
    records: dict[tuple[str, str], set[str]] = dataclasses.field(default_factory=dict)
    update_rcode: Optional[int] = None
    raise_on_update: Optional[Exception] = None
    sent: list[dns.message.Message] = dataclasses.field(default_factory=list)

    def exchange(self, message: dns.message.Message, server: Endpoint,
                 timeout: float) -> dns.message.Message:
        """The ``Exchange`` the client under test calls."""
        self.sent.append(message)
        wire = dns.message.from_wire(message.to_wire(), keyring=message.keyring)
        if wire.opcode() == dns.opcode.UPDATE:
            response = self._update(wire)
        else:
            response = self._query(wire)
        # Through the wire and back, as a real answer comes, so its TSIG is checked too.
        return dns.message.from_wire(response.to_wire(), keyring=message.keyring,
                                     request_mac=message.mac)

    def _zone_of(self, name: dns.name.Name) -> Optional[dns.name.Name]:
        matches = [dns.name.from_text(zone) for zone in self.zones
                   if name.is_subdomain(dns.name.from_text(zone))]
        return max(matches, key=len) if matches else None

    def _query(self, query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        response = dns.message.make_response(query)
        zone = self._zone_of(question.name)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        owner = question.name.to_text()
        for rdtype in (question.rdtype, dns.rdatatype.CNAME):
            texts = self.records.get((owner, dns.rdatatype.to_text(rdtype)))
            if texts:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, 60, "IN", rdtype, sorted(texts)))
                return response
        if question.rdtype == dns.rdatatype.SOA and question.name == zone:
            response.answer.append(self._soa(zone))
            return response
        if not any(key[0] == owner for key in self.records) and question.name != zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa(zone))
        return response

    @staticmethod
    def _soa(zone: dns.name.Name) -> dns.rrset.RRset:
        return dns.rrset.from_text(zone, 60, "IN", "SOA", f"ns.{zone} host.{zone} 1 60 60 600 60")

    def _update(self, update: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(update)
        if self.raise_on_update is not None:
            raise self.raise_on_update
        zone = update.question[0].name
        if self.update_rcode is not None:
            response.set_rcode(self.update_rcode)
            return response
        if zone.to_text() not in self.zones:
            response.set_rcode(dns.rcode.NOTAUTH)
            return response
        for rrset in update.authority:
            if not rrset.name.is_subdomain(zone):
                response.set_rcode(dns.rcode.NOTZONE)
                return response
        for rrset in update.authority:
            key = (rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype))
            values = {rdata.to_text() for rdata in rrset}
            if rrset.deleting == dns.rdataclass.NONE:
                self.records[key] = self.records.get(key, set()) - values
            else:
                self.records.setdefault(key, set()).update(values)
        return response

    def txt(self, name: str) -> set[str]:
        """The TXT values held at ``name``, unquoted."""
        return {text.strip('"') for text in self.records.get((name, "TXT"), set())}
