"""Red team (issue 20): a webhook target is checked again before every delivery attempt (DNS rebinding).

The name is resolved by a stand-in ``getaddrinfo`` whose answers change between attempts, and the POST is
recorded instead of sent, so the expectation (which address each attempt goes to, or that none goes out)
is written out by hand.
"""

from __future__ import annotations

import socket

import pytest

from server import webhooks

PUBLIC_1, PUBLIC_2, LOOPBACK = "93.184.216.34", "8.8.8.8", "127.0.0.1"


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch):
    """(answers, posts): queue what the name resolves to next; every POST lands in ``posts``, answered 503."""
    answers: list[str] = []
    posts: list[tuple[str, str]] = []

    def getaddrinfo(host, port, *args, **kwargs):
        assert host == "hook.example"
        address = answers.pop(0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def post_pinned(url, address, body, headers, timeout=10.0):
        posts.append((url, address))
        return 503

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(webhooks, "post_pinned", post_pinned)
    return answers, posts


def test_a_name_that_turns_private_between_attempts_gets_no_second_post(wire) -> None:
    answers, posts = wire
    answers += [PUBLIC_1, LOOPBACK, PUBLIC_1]
    url = "http://hook.example/x"
    assert webhooks.deliver(url, b"{}", "m1", "key", allow_private=False, delays=(0.0, 0.0)) is False
    assert posts == [(url, PUBLIC_1)]  # the retry resolved to loopback: refused, nothing sent there
    assert answers == [PUBLIC_1]  # and the delivery stopped at that refusal


def test_each_attempt_connects_to_the_address_it_just_checked(wire) -> None:
    answers, posts = wire
    answers += [PUBLIC_1, PUBLIC_2, PUBLIC_1]
    url = "http://hook.example/x"
    assert webhooks.deliver(url, b"{}", "m2", "key", allow_private=False, delays=(0.0, 0.0)) is False
    assert posts == [(url, PUBLIC_1), (url, PUBLIC_2), (url, PUBLIC_1)]
    assert answers == []


def test_a_name_private_from_the_start_gets_no_post(wire) -> None:
    answers, posts = wire
    answers += [LOOPBACK]
    assert webhooks.deliver("http://hook.example/x", b"{}", "m3", "key", False, delays=(0.0,)) is False
    assert posts == [] and answers == []
