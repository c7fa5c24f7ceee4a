"""The tests' one-off requests to their loopback servers: httpx's functions of the same names, sharing one TLS
context (``httpretry.tls_context``). httpx's own build a client per call, and with it a TLS context parsed from
certifi's whole bundle (about 27 ms of CPU): most of a minute over a run. Each call still gets a client of its own,
so no cookie or connection carries over from one request to the next."""

from __future__ import annotations

from typing import Any

import httpx

from httpretry import tls_context


def request(method: str, url: str, **options: Any) -> httpx.Response:
    return httpx.request(method, url, verify=tls_context(), **options)


def get(url: str, **options: Any) -> httpx.Response:
    return request("GET", url, **options)


def head(url: str, **options: Any) -> httpx.Response:
    return request("HEAD", url, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return request("POST", url, **options)


def put(url: str, **options: Any) -> httpx.Response:
    return request("PUT", url, **options)


def delete(url: str, **options: Any) -> httpx.Response:
    return request("DELETE", url, **options)
