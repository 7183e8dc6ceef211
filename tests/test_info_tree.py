"""Issue 21 item 5: `kdx info` shows an explainer's whole tree, one line per layer, never cut with "..."."""

from __future__ import annotations

from kdx.commands.info import tree_text


def test_the_tree_is_shown_whole():
    names = [f"class-with-a-long-name-{i}" for i in range(10)]
    tree = {"layers": [{"layer": 1, "groups": [{"expert": 0, "classes": list(range(5)), "names": names[:5]},
                                               {"expert": 1, "classes": list(range(5, 10)), "names": names[5:]}]},
                       {"layer": 2, "groups": [{"expert": 0, "classes": [], "names": []},
                                               {"expert": 1, "classes": list(range(10)), "names": names}]}]}
    text = tree_text(tree)
    assert "..." not in text and all(n in text for n in names)
    assert text.splitlines()[0].startswith("layer 1: {class-with-a-long-name-0,") and text.count("\n") == 1
    assert "{}" not in text  # empty experts are left out
