"""Named policies: host-installed rule sets that VMs reference by name and hash.

A policy is a file ``etc/virt-aa/policies/<name>`` in the per-VM rule
syntax.  A VM references it from its domain XML's ``<metadata>`` (our own
namespace) by *name and sha256 only*: whoever can write domain XML must not
be able to grant host file access, so raw rule text never travels in the
XML.  The host where the VM starts resolves the names; a missing policy or
a different hash refuses the start (or, if the host says so, only warns).
"""

from __future__ import annotations

NS = "https://virt-aa.dev/xmlns/policies/1"
PREFIX = "virtaa"
MAX_POLICIES = 32
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


class PolicyError(ValueError):
    """A policy name, file or reference that is not acceptable (one line)."""


def valid_name(name: str) -> bool:
    return (0 < len(name) <= 64 and name[0] not in "._-" and
            all(c in _NAME_CHARS for c in name))


def digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class Ref:
    """A policy named by a domain: name, sha256."""

    __slots__ = ("name", "sha256")

    def __init__(self, name: str, sha256: str) -> None:
        self.name = name
        self.sha256 = sha256

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and (self.name, self.sha256) == (other.name, other.sha256)

    def __hash__(self) -> int:
        return hash((self.name, self.sha256))

    def __repr__(self) -> str:
        return f"Ref({self.name!r}, {self.sha256[:12]}...)"


class Meta:
    """What a domain's virt-aa metadata asks for."""

    __slots__ = ("mode", "refs")

    def __init__(self, refs: tuple[Ref, ...] = (), mode: str | None = None) -> None:
        self.refs = refs
        self.mode = mode


def parse_metadata(node: object) -> Meta:
    """Our element inside ``<metadata>`` (an :class:`xmlsafe.Node`) -> :class:`Meta`.

    Hostile input: names and hashes are validated, counts bounded, and
    anything else in the element (rule text, includes) is refused.
    """
    from virt_aa.generate.xmlsafe import Node

    assert isinstance(node, Node)
    refs: list[Ref] = []
    mode = None
    for child in node.children:
        tag = child.tag.split(":", 1)[-1]
        if tag == "policy":
            name = child.get("name") or ""
            sha = (child.get("sha256") or "").lower()
            if not valid_name(name):
                raise PolicyError(f"invalid policy name {name[:80]!r} in the domain metadata")
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise PolicyError(f"policy {name!r}: the metadata needs its sha256 (64 hex)")
            if child.children or child.text.strip():
                raise PolicyError(f"policy {name!r}: rule text is never taken from the "
                                  f"domain XML, only a name and a hash")
            refs.append(Ref(name, sha))
        elif tag == "mode":
            mode = child.text.strip()
            if mode not in ("complain", "enforce"):
                raise PolicyError(f"unknown mode {mode[:20]!r} in the domain metadata")
        else:
            raise PolicyError(f"unexpected <{child.tag[:40]}> in virt-aa's domain metadata")
        if len(refs) > MAX_POLICIES:
            raise PolicyError(f"more than {MAX_POLICIES} policies in the domain metadata")
    if len(set(r.name for r in refs)) != len(refs):
        raise PolicyError("a policy is named twice in the domain metadata")
    return Meta(tuple(refs), mode)


def find_metadata(metadata: object, root: object = None) -> object | None:
    """Our namespaced element among ``<metadata>``'s children, if any.

    The namespace may be declared on the element itself or on ``<metadata>``
    or ``<domain>`` (serialisers differ), so all three scopes are looked at.
    """
    from virt_aa.generate.xmlsafe import Node

    if not isinstance(metadata, Node):
        return None
    scopes = [n for n in (root, metadata) if isinstance(n, Node)]
    for child in metadata.children:
        prefix = child.tag.split(":", 1)[0] if ":" in child.tag else ""
        key = f"xmlns:{prefix}" if prefix else "xmlns"
        uri = None
        for node in (*scopes, child):          # innermost declaration wins
            uri = node.get(key, uri)
        if uri == NS:
            return child
    return None


def render_metadata(meta: Meta) -> str:
    """The element virt-aa keeps in a domain's metadata (no namespace prefix)."""
    out = [f'<policies xmlns="{NS}">']
    for ref in meta.refs:
        out.append(f'<policy name="{ref.name}" sha256="{ref.sha256}"/>')
    if meta.mode:
        out.append(f"<mode>{meta.mode}</mode>")
    out.append("</policies>")
    return "".join(out)
