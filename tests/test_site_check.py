"""The link checker of tests/site_check.py (the browser part runs in `make site-test`)."""

from site_check import check_links, main, pages


def test_check_links_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "index.html").write_text('<a href="book/a.html#sec">ok</a> <a href="book/missing.html">x</a>')
    (tmp_path / "book" / "a.html").write_text(
        '<h1 id="sec">A</h1><a href="#sec">self</a><a href="#nope">bad</a>'
        '<a href="https://example.org/x">external</a><a href="../index.html">up</a>')
    assert [p.name for p in pages(tmp_path)] == ["a.html", "index.html"]
    index_problems = check_links(tmp_path, tmp_path / "index.html")
    assert len(index_problems) == 1 and "missing.html" in index_problems[0]
    page_problems = check_links(tmp_path, tmp_path / "book" / "a.html")
    assert page_problems == ["broken anchor '#nope': no id 'nope' in a.html"]


def test_main_refuses_unknown_options_and_extra_paths(tmp_path, capsys):
    assert main(["site_check.py", "--bogus"]) == 2
    assert main(["site_check.py", str(tmp_path), str(tmp_path)]) == 2
    assert "usage" in capsys.readouterr().err
    assert main(["site_check.py", "--help"]) == 0
    assert main(["site_check.py", "--screenshots", str(tmp_path)]) == 2      # no built site there
    assert "no built site" in capsys.readouterr().out
