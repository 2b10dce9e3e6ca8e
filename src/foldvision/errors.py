"""The one exception type users see: a message naming the file or config key and the fix."""


class FoldvisionError(Exception):
    """A user-facing error: bad config, bad data or a bad environment. Never a bug."""
