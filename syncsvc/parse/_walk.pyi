from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lxml import etree

class CompiledWalk:
    def __init__(
        self,
        record: str,
        fields: Sequence[tuple[str, int, Callable[[str], Any] | None, Callable[[Any], str] | None]],
        forbidden: Iterable[str],
        null: str,
        render_refs: Callable[[list[str]], str],
    ) -> None: ...
    def parts(self, elem: etree._Element) -> list[str] | None: ...
    def rows(
        self, root: etree._Element, fallback: Callable[[etree._Element], list[str]]
    ) -> list[list[str]]: ...

def pack(
    rows: list[list[str]],
    ord_base: int,
    only: str | None,
    guid_at: int,
    key_at: int,
    null: str,
    events: dict[str, int],
) -> tuple[bytes, int, int, int]: ...
def utc_text(text: str) -> str | None: ...
def render_mapping(mapping: dict[str, str]) -> str: ...
