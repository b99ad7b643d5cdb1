"""Fixtures for dialog tests: a chat with the main dialog on a fake clock."""

from __future__ import annotations

import pytest
from dialog_chat import Chat

from state.clock import FakeClock


@pytest.fixture
def chat(fake_clock: FakeClock) -> Chat:
    return Chat(fake_clock)
