"""One writer for every document: blocks rendered as Markdown and as a self-contained HTML page."""

from vfrac.document import ci_text, p_clause, p_text, to_html, to_markdown

BLOCKS = [("h1", "Review <draft>"),
          ("p", "3 patients", {"class": "note"}),
          ("group", "slice", [("figures", "gradcam", [("img", "a.png", "crop", {"data-artifact": "review/a.png"}),
                                                      ("img", "b.png", "slice")])]),
          ("table", ["method", "rho"], [["gradcam", "0.12"]])]


def test_blocks_render_with_their_attributes_in_html_and_without_them_in_markdown():
    html = to_html(BLOCKS, "r", style=".x{}", script="<script>go()</script>")
    assert html.startswith("<!DOCTYPE html>") and html.endswith("<script>go()</script></body></html>\n")
    assert "<h1>Review &lt;draft&gt;</h1>" in html and "<p class='note'>3 patients</p>" in html
    assert "<div class='slice'><div class='figures'><p>gradcam</p><img src='a.png' alt='crop' " \
           "data-artifact='review/a.png'><img src='b.png' alt='slice'></div></div>" in html
    assert "<table><tr><th>method</th><th>rho</th></tr><tr><td>gradcam</td><td>0.12</td></tr></table>" in html
    assert ".x{}</style>" in html
    text = to_markdown(BLOCKS)
    assert "# Review <draft>" in text and "![crop](a.png)" in text and "| gradcam | 0.12 |" in text
    assert "class" not in text and "data-artifact" not in text


def test_intervals_and_p_values_are_written_one_way():
    assert ci_text(0.853, (0.71, 0.934)) == "0.85 (0.71-0.93)"
    assert ci_text(-0.1, (-0.34, 0.12)) == "-0.10 (-0.34 to 0.12)"
    assert ci_text(None, (0.1, 0.2)) == "n/a" and ci_text(0.5) == "0.50"
    assert p_text(0.0004) == "<0.001" and p_text(0.0123) == "0.012"
    assert p_clause(0.0004) == "p < 0.001" and p_clause(0.0123) == "p = 0.012"
