"""The one exception type the CLI turns into a one-line message and exit code 2."""


class KdxError(Exception):
    """A user-facing error: bad input, missing files, impossible settings."""


def did_you_mean(kind: str, name: str, valid) -> KdxError:
    valid = sorted(valid)
    return KdxError(f"unknown {kind} '{name}'; valid {kind}s: {', '.join(valid)}")
