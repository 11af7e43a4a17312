"""Token ids -> text, incrementally, for streaming: stop strings cut the text, and text that may still
change (an incomplete UTF-8 sequence, or the beginning of a stop string) is held back until it is settled."""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """The text of one choice, grown token by token. ``push`` returns the newly settled text."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.hold = max((len(s) for s in self.stop_strings), default=1) - 1  # chars a stop string may still claim
        self.ids: list[int] = []
        self.sent = 0  # characters already returned
        self.stopped = False  # a stop string was found: later tokens are ignored

    def _text(self) -> str:
        text = self.tokenizer.decode(self.ids)
        for s in self.stop_strings:
            at = text.find(s)
            if at >= 0:
                text, self.stopped = text[:at], True
        return text

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token))
        text = self._text()
        if self.stopped:
            return self._emit(text, len(text))
        settled = len(text) - self.hold
        while settled > self.sent and text[settled - 1] == "\ufffd":  # an unfinished multi-byte character
            settled -= 1
        return self._emit(text, settled)

    def finish(self) -> str:
        """Everything not yet returned (the choice ended)."""
        if self.stopped:
            return ""
        text = self._text()
        return self._emit(text, len(text))

    def _emit(self, text: str, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = text[self.sent:upto], upto
        return out

    @property
    def text(self) -> str:
        return self._text() if self.ids else ""
