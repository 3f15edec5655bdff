"""Helpers for tests that talk to the simulator over HTTP and read its answers independently."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

ACCOUNT = "sim-account-token"
EVENT_ONLY = "sim-event-token"


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def code(self) -> int | None:
        """The responseCode (wherever it sits in the document), None if there is none."""
        text = ET.fromstring(self.body).findtext("responseCode")  # noqa: S314 (our own loopback server)
        return None if text is None else int(text)

    def records(self, record: str) -> list[ET.Element]:
        return ET.fromstring(self.body).findall(f"./*/{record}")  # noqa: S314 (our own loopback server)


async def post(
    base_url: str,
    path: str,
    data: dict[str, str] | list[tuple[str, str]] | str | None = None,
    *,
    token: str | None = ACCOUNT,
    event: str | None = None,
    url_suffix: str = "",
) -> Answer:
    """POST a form to the simulator and return status, headers and the whole body."""
    if data is None:
        form: list[tuple[str, str]] = []
        if token is not None:
            form.append(("apiToken", token))
        if event is not None:
            form.append(("event", event))
        payload: object = form
    else:
        payload = data
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + path + url_suffix, data=payload) as resp,
    ):
        return Answer(resp.status, resp.headers, await resp.read())


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
            addr: str = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr
