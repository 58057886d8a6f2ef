import pytest

from lookbook.io.styles import (
    BLANK_LINE,
    StylesHeaderError,
    check_header,
    decode_line,
    is_header,
    parse_product_id,
    parse_styles_line,
)

GOOD = "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt"


def test_good_line():
    row = parse_styles_line(GOOD)
    assert row["reason"] is None
    assert row["product_id"] == 15970 and row["year"] == 2011
    assert row["master_category"] == "Apparel"
    assert row["display_name"] == "Turtle Check Men Navy Blue Shirt"


def test_unquoted_commas_in_name_are_joined_back():
    # Real row 3413-style: 12 fields.
    line = "3413,Women,Apparel,Topwear,Tops,Pink,Summer,2011,Casual,Nike Women, Pink, Top"
    row = parse_styles_line(line)
    assert row["reason"] is None
    assert row["display_name"] == "Nike Women, Pink, Top"


def test_quoted_name_with_commas():
    row = parse_styles_line('1,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,"Puma, Red Tee"')
    assert row["display_name"] == "Puma, Red Tee"


def test_stray_inch_quote_inside_name_is_literal():
    line = "7491,Women,Apparel,Bottomwear,Shorts,Pink,Summer,2011,Sports,Nike EM Tempo 3.5\" Pink Short"
    assert parse_styles_line(line)["display_name"] == 'Nike EM Tempo 3.5" Pink Short'


def test_empty_fields_become_none():
    row = parse_styles_line("53781,Men,Apparel,Topwear,Tshirts,Blue,,,Sports,Puma Tee")
    assert row["reason"] is None and row["season"] is None and row["year"] is None


@pytest.mark.parametrize("line, reason", [
    ("15970,Men,Apparel", "row has 3 fields, expected 10"),
    ("abc,Men,Apparel,Topwear,Shirts,Navy,Fall,2011,Casual,X", "id 'abc' is not a number"),
    ("1,Men,Apparel,Top,wear,Shirts,Navy,Fall,2011,Casual", "year 'Fall' is not a number"),
])
def test_bad_lines_get_reasons(line, reason):
    assert reason in parse_styles_line(line)["reason"]


def test_short_row_keeps_its_id_for_the_rejects_table():
    assert parse_styles_line("42,Men")["product_id"] == 42


def test_header_check():
    check_header("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
                 "productDisplayName")
    with pytest.raises(StylesHeaderError, match="Kaggle layout"):
        check_header("id,name,category")


# --- one bad line never raises: every problem is a reason, every value fits its column --------

HEADER = ("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
          "productDisplayName")


@pytest.mark.parametrize("line, reason", [
    ("99999999999999999999,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X",
     "id '99999999999999999999' is out of range"),
    ("9223372036854775808,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X",
     "is out of range"),
    ("-5,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X", "id '-5' is not a number"),
    ("١٢٣,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X", "is not a number"),
    ("1_000,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X", "is not a number"),
    (",Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X", "empty id"),
    (",,,,,,,,,", "empty id"),
    ("7,Men,Apparel,Topwear,Tshirts,Red,Summer,2147483648,Casual,X", "out of range (32-bit)"),
    ("7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual," + "y" * 200_000, "characters long"),
    ('7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,"' + "y" * 131_070 + '"',
     "characters long"),
    ("7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,A\x00B", "NUL byte"),
    ('7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,"Two', "quoted field is not closed"),
    ('7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,"Puma" Tee', "malformed CSV quoting"),
    (HEADER, "repeated header line"),
    (" " + HEADER.replace(",", " , "), "repeated header line"),
])
def test_field_level_problems_are_reasons_not_exceptions(line, reason):
    row = parse_styles_line(line)
    assert reason in row["reason"]
    assert row["product_id"] is None or 0 <= row["product_id"] < 2**63
    assert row["year"] is None or -(2**31) <= row["year"] < 2**31


def test_bad_rows_keep_their_id_where_it_is_readable():
    assert parse_styles_line("7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,A\x00B")[
        "product_id"] == 7
    assert parse_styles_line('7,Men,Apparel,"Two')["product_id"] == 7


def test_blank_and_whitespace_lines_are_marked_blank():
    assert parse_styles_line("")["reason"] == BLANK_LINE
    assert parse_styles_line("  \t ")["reason"] == BLANK_LINE


def test_limits_are_the_column_types():
    row = parse_styles_line(
        "9223372036854775807,Men,Apparel,Topwear,Tshirts,Red,Summer,-2147483648,Casual,X")
    assert row["reason"] is None
    assert (row["product_id"], row["year"]) == (2**63 - 1, -(2**31))


def test_decode_line_bom_and_invalid_utf8():
    assert decode_line(b"\xef\xbb\xbfid,gender", 1) == ("id,gender", None)
    assert decode_line("Café".encode(), 5) == ("Café", None)
    text, reason = decode_line(b"1,Caf\xe9", 5)
    assert text == "1,Caf\\xe9" and "not valid UTF-8 (byte 6" in reason


def test_header_with_bom_is_accepted_and_is_header_is_exact():
    check_header("\ufeff" + HEADER)
    assert is_header(HEADER) and not is_header("id,Men,Apparel")


def test_product_id_rule():
    assert parse_product_id("0042") == 42 and parse_product_id("9223372036854775807") == 2**63 - 1
    for bad in ["", "-1", "+1", "1.0", "1e3", "١", "9223372036854775808", None]:
        assert parse_product_id(bad) is None
