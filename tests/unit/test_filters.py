"""The filter language: parsing, limits, and checks against a collection's indexed fields."""

from __future__ import annotations

import pytest

from semsearch.core.errors import InvalidArgument
from semsearch.core.filters import MAX_DEPTH, MAX_LENGTH, And, Compare, InSet, Not, Or, check, parse

FIELDS = {"label": "string", "price": "number", "in-stock": "string"}


def error(text: str, fields=FIELDS) -> str:
    with pytest.raises(InvalidArgument) as info:
        check(parse(text), fields, "shop")
    assert info.value.field == "filter"
    return str(info.value)


def test_the_language():
    assert parse('label = "Bag"') == Compare("label", "==", "Bag")
    assert parse("label == 'Bag'") == Compare("label", "==", "Bag")
    assert parse(r'label != "say \"hi\""') == Compare("label", "!=", 'say "hi"')
    assert parse("price >= -1.5e2") == Compare("price", ">=", -150.0)
    assert parse('label in ["Bag", "Sandal"]') == InSet("label", ("Bag", "Sandal"))
    assert parse("price not in [1, 2]") == InSet("price", (1.0, 2.0), negated=True)
    assert parse('price > 1 and price < 5 or not label = "x"') == Or(
        (And((Compare("price", ">", 1.0), Compare("price", "<", 5.0))), Not(Compare("label", "==", "x")))
    )
    assert parse('!(label = "a" || label = "b") && price<=3') == And(
        (Not(Or((Compare("label", "==", "a"), Compare("label", "==", "b")))), Compare("price", "<=", 3.0))
    )
    assert parse("in-stock = 'yes'") == Compare("in-stock", "==", "yes")
    assert parse("  ") is None and parse("") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ('label = "Bag', "at position 9: a string without its closing quote"),
        ("label = ", "expected a value"),
        ("label", "expected =, !=, <, <=, >, >=, in or not in after 'label'"),
        ("label in []", 'at position 11: expected a value ("text" or a number)'),
        ('label in ["a" "b"]', "expected ',' or ']'"),
        ('(label = "a"', "expected ')' at the end"),
        ('label = "a" )', "unexpected ')'"),
        ('__import__("os")', "expected =, !=, <, <=, >, >=, in or not in after '__import__'"),
        ("price = 12abc", "expected a value"),
        ('label = "a" and', "expected a field name at the end"),
        ("price not = 3", "expected 'in' after 'not'"),
    ],
)
def test_syntax_errors_name_the_position(text, message):
    assert message in error(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "red"', "field 'colour' is not indexed by collection 'shop' (indexed fields: "
                           "in-stock (string), label (string), price (number))"),
        ("label = 3", "field 'label' holds strings, got 3 (write '3' in quotes)"),
        ('price = "3"', 'field \'price\' holds numbers, got "3"'),
        ('label < "b"', "field 'label' holds strings: compare it with =, != or in, not <"),
        ('price in [1, "x"]', "field 'price' holds numbers"),
    ],
)  # fmt: skip
def test_fields_and_types_are_checked(text, message):
    assert message in error(text)


def test_limits():
    assert "characters, at most" in error("x" * (MAX_LENGTH + 1))
    assert f"nested more than {MAX_DEPTH} deep" in error(
        "(" * (MAX_DEPTH + 2) + "price = 1" + ")" * (MAX_DEPTH + 2)
    )
    assert "more than 128 comparisons" in error(" or ".join(["price = 1"] * 129))
    assert "more than 1024 values" in error("price in [" + ",".join(["1"] * 1100) + "]")
    assert "not indexed" in error('label = "a"', {})
