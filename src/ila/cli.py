"""Command-line interface (placeholder while the package is assembled)."""


def main(argv: list[str] | None = None) -> int:
    return 0
