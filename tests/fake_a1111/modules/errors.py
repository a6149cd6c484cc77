"""Fake `modules.errors`: `report` prints like the host and keeps the messages for the tests."""

import sys
import traceback

reported: list[str] = []


def report(message: str, *, exc_info: bool = False) -> None:
    text = message
    if exc_info:
        text += "\n" + traceback.format_exc()
    reported.append(text)
    print("***", text, file=sys.stderr)
