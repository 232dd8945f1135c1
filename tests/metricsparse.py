"""Reading ``/metrics`` in tests, with ``prometheus_client``'s own parser."""

from __future__ import annotations

import urllib.error
import urllib.request

import attrs
import trio
from prometheus_client.parser import text_string_to_metric_families


@attrs.frozen
class Scrape:
    """Every sample of one scrape, by sample name and labels."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]  # family name -> type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in samples, f"{key} twice"
                samples[key] = sample.value
        return cls(samples, families)

    def __call__(self, name: str, **labels: str) -> float:
        """The value of the sample ``name`` with exactly ``labels``; a missing one fails the test."""
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels}"
        return self.samples[key]

    def labels(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample named ``name``."""
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


def _get(url: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), {k.lower(): v for k, v in error.headers.items()}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """``GET url``: the status, the body and the headers (lower-cased names)."""
    return await trio.to_thread.run_sync(_get, url, headers or {})


async def scrape(url: str, headers: dict[str, str] | None = None) -> Scrape:
    status, body, _ = await get(url, headers)
    assert status == 200, (status, body)
    return Scrape.parse(body)
