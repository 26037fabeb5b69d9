"""Reading the XML of labelling tools (Pascal VOC, CVAT) safely, and writing it.

Annotation files are untrusted input: :func:`read_xml` parses through ``defusedxml``, which refuses
entity declarations (billion laughs) and external entities or DTDs (XXE) instead of expanding or
fetching them; every failure is a one-line :class:`~cvapps.errors.DataError` naming the file and,
for malformed XML, the line. Writing builds plain :mod:`xml.etree` trees (serialising is safe).
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element, ParseError, SubElement, indent, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from cvapps.errors import DataError

# Larger annotation files are refused before parsing: one image's VOC/LabelMe file is kilobytes and a
# CVAT file of 100k images some hundred MB; anything past this is not an annotation file.
MAX_XML_BYTES = 1 << 30


def read_xml(path: str | Path, where: str | None = None) -> Element:
    """The root element of the XML file ``path``; ``where`` names it in errors (default: the path)."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    if path.stat().st_size > MAX_XML_BYTES:
        raise DataError(f"{where}: larger than {MAX_XML_BYTES >> 20} MB, not an annotation file")
    try:
        return fromstring(path.read_bytes())
    except DefusedXmlException as exc:
        raise DataError(f"{where}: XML entity declarations and external references are refused "
                        f"({type(exc).__name__})") from None
    except ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else "?"
        reason = str(exc).split(":", 1)[0]
        raise DataError(f"{where}:{line}: not well-formed XML ({reason})") from None
    except (OSError, RecursionError) as exc:
        raise DataError(f"{where}: cannot read ({type(exc).__name__})") from None


def child_text(elem: Element, *path: str) -> str | None:
    """Stripped text of the sub-element at ``path`` (direct children, one name each), or None."""
    node: Element | None = elem
    for name in path:
        node = node.find(name) if node is not None else None
    if node is None or node.text is None:
        return None
    return node.text.strip()


def add(parent: Element, tag: str, text: object = None, **attrib: str) -> Element:
    """Append ``<tag attrib>text</tag>`` to ``parent`` and return it."""
    node = SubElement(parent, tag, attrib)
    if text is not None:
        node.text = str(text)
    return node


def xml_document(root: Element) -> str:
    """``root`` as an indented UTF-8 XML document (with the declaration)."""
    indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + tostring(root, encoding="unicode") + "\n"


def fmt(value: float, decimals: int = 3) -> str:
    """A coordinate as text: an integer when it is one, else at most ``decimals`` decimals."""
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
