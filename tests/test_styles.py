import pytest

from lookbook.io.styles import StylesHeaderError, check_header, parse_styles_line

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
