"""The service's error tree: an InvalidArgument message stays short however many violations."""

from __future__ import annotations

from certbroker.errors import MESSAGE_VIOLATIONS, FieldViolation, InvalidArgument


def test_message_names_the_first_violations_and_counts_the_rest() -> None:
    violations = [FieldViolation(f"domains[{i}]", "is bad") for i in range(1000)]
    error = InvalidArgument(violations)
    assert error.violations == violations  # the mapper bounds what is sent
    assert error.message.startswith("domains[0]: is bad; domains[1]: is bad")
    assert f"domains[{MESSAGE_VIOLATIONS - 1}]: is bad; and 990 more" in error.message
    assert f"domains[{MESSAGE_VIOLATIONS}]:" not in error.message


def test_few_violations_are_all_in_the_message() -> None:
    error = InvalidArgument([FieldViolation("a", "x"), FieldViolation("b", "y")])
    assert error.message == "a: x; b: y"
