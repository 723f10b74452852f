"""A small, hostile-input-safe XML reader built directly on pyexpat.

Domain XML comes from anyone with domain write access, so DTDs, entities and
external references are refused outright (no billion laughs, no XXE), and the
size and nesting depth are bounded.  pyexpat is used directly because
``xml.etree`` alone costs ~10 ms of imports, and this runs at every VM start.
"""

from __future__ import annotations

import pyexpat

MAX_XML_BYTES = 10 * 1024 * 1024  # libvirt's MAX_FILE_LEN for the helper
MAX_DEPTH = 128


class XMLError(ValueError):
    """The document is not acceptable domain XML (one-line reason)."""


class Node:
    """One element: tag, attributes, children and its direct text."""

    __slots__ = ("attrs", "children", "tag", "text")

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[Node] = []
        self.text = ""

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def find(self, tag: str) -> Node | None:
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findall(self, tag: str) -> list[Node]:
        return [c for c in self.children if c.tag == tag]

    def path(self, *tags: str) -> Node | None:
        """The first element reached by following ``tags`` from here."""
        node: Node | None = self
        for tag in tags:
            if node is None:
                return None
            node = node.find(tag)
        return node


def _refuse(what: str) -> None:
    raise XMLError(f"{what} are not allowed in domain XML")


def parse(data: bytes) -> Node:
    """Parse ``data`` into a tree of :class:`Node`, or raise :class:`XMLError`."""
    if len(data) > MAX_XML_BYTES:
        raise XMLError(f"XML larger than {MAX_XML_BYTES} bytes")
    if not data.strip():
        raise XMLError("empty input")
    parser = pyexpat.ParserCreate()
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Node] = []
    texts: list[list[str]] = []
    root: list[Node] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        if len(stack) >= MAX_DEPTH:
            raise XMLError(f"elements nested deeper than {MAX_DEPTH}")
        node = Node(tag, attrs)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)
        texts.append([])

    def end(tag: str) -> None:
        stack.pop().text = "".join(texts.pop())

    def chars(text: str) -> None:
        if texts:
            texts[-1].append(text)

    def doctype(*_args: object) -> None:
        _refuse("DTDs (<!DOCTYPE>)")

    def entity(*_args: object) -> None:
        _refuse("entity declarations")

    def external(*_args: object) -> int:
        _refuse("external entities")
        return 0

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    try:
        parser.Parse(data, True)
    except pyexpat.ExpatError as exc:
        raise XMLError(f"malformed XML: {pyexpat.ErrorString(exc.code)} "
                       f"at line {exc.lineno}, column {exc.offset}") from None
    except RecursionError:
        raise XMLError("XML nested too deeply") from None
    if not root:
        raise XMLError("no root element")
    return root[0]
