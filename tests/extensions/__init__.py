"""Extensions built as docs/extending.md's recipes build them, each one file or folder that
tests/test_extending.py registers with one registry entry."""
